"""Unlearning algorithms: every module here registers its `Unlearner` with `@register_algorithm`."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
