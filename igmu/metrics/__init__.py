"""Metrics: every module in this package registers its metrics with `@register_metric` on import."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
