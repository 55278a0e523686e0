"""MQTT on asyncio: connection settings, broker URLs and a paho-mqtt bridge without threads."""

from amora.mqtt.bridge import ConnectFailed, MqttBridge, MqttError, NotConnected, SubscribeFailed, tls_context
from amora.mqtt.settings import (
    DEFAULT_PORT,
    DEFAULT_TLS_PORT,
    BrokerAddress,
    MqttSettings,
    Will,
    parse_broker_url,
)

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "BrokerAddress",
    "ConnectFailed",
    "MqttBridge",
    "MqttError",
    "MqttSettings",
    "NotConnected",
    "SubscribeFailed",
    "Will",
    "parse_broker_url",
    "tls_context",
]
