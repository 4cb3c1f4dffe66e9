"""Per-module-type handlers: after a module's tensors are sliced, fix its size attributes.

Adding a layer type means registering one function: ``pk.register_handler(MyLayer, sync)``
(or ``@register(MyLayer)`` on a built-in handler in a file beside these), where
``sync(module)`` sets the attributes that describe its new shapes from its tensors.
"""

# the built-in handlers register themselves on import
from . import attention, conv, linear, norm, recurrent  # noqa: E402,F401,I001
from .registry import register, register_handler, sync_attributes

__all__ = ["register", "register_handler", "sync_attributes"]
