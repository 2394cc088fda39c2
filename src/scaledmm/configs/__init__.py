"""Launch configs: the config type, the heuristic, and the lookup that chooses among them."""

from scaledmm.configs.config import MatmulConfig
from scaledmm.configs.heuristic import heuristic_config
from scaledmm.configs.lookup import device_limits, select_config

__all__ = ["MatmulConfig", "device_limits", "heuristic_config", "select_config"]
