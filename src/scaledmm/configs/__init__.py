"""Launch configs: the config type, tuned files, the heuristic, and the lookup that chooses among them."""

from scaledmm.configs.config import MatmulConfig
from scaledmm.configs.heuristic import heuristic_config
from scaledmm.configs.lookup import Plan, clear_cache, device_limits, plan, select_config

__all__ = ["MatmulConfig", "Plan", "clear_cache", "device_limits", "heuristic_config", "plan", "select_config"]
