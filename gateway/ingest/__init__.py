"""MQTT input. The only place (with the MQTT sink) that imports paho; it hands the rest of the
gateway :class:`~gateway.model.Envelope` objects."""

from gateway.ingest.client import BrokerSpec, parse_broker_url
from gateway.ingest.source import MqttSource

__all__ = ["BrokerSpec", "MqttSource", "parse_broker_url"]
