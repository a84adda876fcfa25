"""The other end of a DDS wire for the tests: what a ROS 2 node's default subscription and a camera driver's
publisher are (domain 42, loopback only: tests/conftest.py)."""

from __future__ import annotations

from typing import Any

from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration

TEST_DOMAIN = 42


def subscriber(topic: str, kind: type) -> Any:
    """A ROS 2 node's default subscription: reliable, keep last 10, volatile."""
    participant = DomainParticipant(TEST_DOMAIN)
    qos = Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.History.KeepLast(10))
    reader = DataReader(participant, Topic(participant, topic, kind, qos=qos), qos=qos)
    reader.participant_ref = participant  # keep the participant alive with the reader
    return reader


def publisher(topic: str, kind: type) -> Any:
    """A camera driver's publisher: reliable, keep last 1 (a best-effort reader matches it)."""
    participant = DomainParticipant(TEST_DOMAIN)
    qos = Qos(Policy.Reliability.Reliable(duration(seconds=1)), Policy.History.KeepLast(1))
    writer = DataWriter(participant, Topic(participant, topic, kind, qos=qos), qos=qos)
    writer.participant_ref = participant
    return writer
