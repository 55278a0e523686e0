"""A local stand-in for Azure IoT Hub that the real azure-iot-device SDK connects to.

mosquitto (TLS) + an HTTP CONNECT proxy (fault injection) + a hub-side MQTT client (twin, direct
methods, telemetry). One stand-in serves one device. See `LocalHub` and `python -m tools.iothub_standin`.
"""

from tools.iothub_standin.hub import Telemetry
from tools.iothub_standin.localhub import LocalHub
from tools.iothub_standin.proxy import Mode

__all__ = ["LocalHub", "Mode", "Telemetry"]
