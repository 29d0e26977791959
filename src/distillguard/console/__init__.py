"""The operators' web console at ``/admin/ui/`` (docs/console.md).

Imported by the gateway only when the console is first visited: it pulls in
Jinja2, which the proxy's hot path never needs.
"""

from distillguard.console.app import Console

__all__ = ["Console"]
