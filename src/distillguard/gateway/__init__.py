"""The gateway: an OpenAI- and Anthropic-compatible reverse proxy (the hot path).

Never imports the analytics stack (numpy, scikit-learn, detect).
"""

from distillguard.gateway.app import Gateway
from distillguard.gateway.errors import GatewayError
from distillguard.gateway.server import build_gateway, serve

__all__ = ["Gateway", "GatewayError", "build_gateway", "serve"]
