"""A fresh local broker (memory storage) has forgotten its log: `make up` retires the
stored offsets with their rows, so ingestion of the new, empty log starts at offset 0
without colliding with the exactly-once keys of the old one."""

from __future__ import annotations

import psycopg

from devstack.cli import retire_forgotten_log


def _seed(url: str, topic: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO user_actions (user_id, action_type, action_timestamp, kafka_topic,"
            " kafka_partition, kafka_offset) VALUES (1, 'LOGIN', now(), %s, 0, 0),"
            " (2, 'LOGIN', now(), %s, 0, 1), (3, 'LOGIN', now(), 'other', 0, 0)",
            (topic, topic),
        )
        conn.execute(
            "INSERT INTO user_actions_dead_letter (kafka_topic, kafka_partition, kafka_offset,"
            " raw, error) VALUES (%s, 1, 0, 'x', 'not JSON')",
            (topic,),
        )
        conn.execute(
            "INSERT INTO kafka_offsets (consumer, topic, partition, next_offset) VALUES"
            " ('c', %s, 0, 2), ('c', %s, 1, 1), ('c', 'other', 0, 1)",
            (topic, topic),
        )


def test_retire_moves_offsets_rows_and_dead_letters_of_the_topic_only(database_url: str) -> None:
    topic = "topic_user_actions"
    _seed(database_url, topic)

    assert retire_forgotten_log(database_url, topic) == 2

    with psycopg.connect(database_url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM kafka_offsets WHERE topic = %s", (topic,)
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM user_actions WHERE kafka_topic = %s", (topic,)
        ).fetchone() == (0,)
        retired = conn.execute(
            "SELECT DISTINCT kafka_topic FROM user_actions WHERE kafka_topic LIKE %s",
            (topic + "@retired-%",),
        ).fetchall()
        assert len(retired) == 1
        name = retired[0][0]
        # every piece of the old log moved together: nothing lost, keys stay unique
        assert conn.execute(
            "SELECT count(*) FROM user_actions WHERE kafka_topic = %s", (name,)
        ).fetchone() == (2,)
        assert conn.execute(
            "SELECT count(*) FROM user_actions_dead_letter WHERE kafka_topic = %s", (name,)
        ).fetchone() == (1,)
        assert conn.execute(
            "SELECT sum(next_offset) FROM kafka_offsets WHERE topic = %s", (name,)
        ).fetchone() == (3,)
        # other topics are untouched
        assert conn.execute(
            "SELECT count(*) FROM user_actions WHERE kafka_topic = 'other'"
        ).fetchone() == (1,)

    # nothing stored for the topic any more: a second call is a no-op
    assert retire_forgotten_log(database_url, topic) == 0
