"""Device configuration: one TOML file, validated by strict pydantic models.

One module per group of sections: :mod:`~edge.config.device` (``[device]``, ``[store]``,
``[health]``), :mod:`~edge.config.mqtt` (``[mqtt]``, ``[sync]``), :mod:`~edge.config.commands`,
:mod:`~edge.config.counter` (``[panel]``, ``[rating]``); :mod:`~edge.config.root` joins them into
:class:`EdgeConfig`, :mod:`~edge.config.loading` reads and validates, :mod:`~edge.config.render`
writes commented TOML.

Every value may be overridden by an environment variable ``EDGE_<SECTION>__<KEY>`` (for example
``EDGE_MQTT__BROKER=mqtts://server.local:8883``). Secrets are never written in the TOML: fields that
hold them are *file* paths (``password_file``), which may be relative to systemd's
``$CREDENTIALS_DIRECTORY`` so ``LoadCredential=`` works.
"""

from __future__ import annotations

from edge.config.commands import CommandsConfig
from edge.config.common import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    ENV_PREFIX,
    BrokerAddress,
    Role,
    resolve_secret_path,
)
from edge.config.counter import (
    WEEKDAYS,
    OfficerShift,
    PanelConfig,
    RatingConfig,
    RatingFeedbackConfig,
    TtsVoice,
    Weekday,
)
from edge.config.device import DeviceConfig, HealthConfig, StoreConfig
from edge.config.loading import (
    config_path,
    env_overrides,
    load_config,
    load_config_data,
    merge_config,
    parse_config,
)
from edge.config.mqtt import MqttConfig, SyncConfig, TlsConfig
from edge.config.render import render_toml, starter_config
from edge.config.root import EdgeConfig

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STATE_DIR",
    "ENV_PREFIX",
    "WEEKDAYS",
    "BrokerAddress",
    "CommandsConfig",
    "DeviceConfig",
    "EdgeConfig",
    "HealthConfig",
    "MqttConfig",
    "OfficerShift",
    "PanelConfig",
    "RatingConfig",
    "RatingFeedbackConfig",
    "Role",
    "StoreConfig",
    "SyncConfig",
    "TlsConfig",
    "TtsVoice",
    "Weekday",
    "config_path",
    "env_overrides",
    "load_config",
    "load_config_data",
    "merge_config",
    "parse_config",
    "render_toml",
    "resolve_secret_path",
    "starter_config",
]
