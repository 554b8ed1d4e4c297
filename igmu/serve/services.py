"""Which served judges an evaluation uses, by its evaluation context class: the world's contexts
(`EvalContext`, `I2IEvalContext`) score with the world judges' application, `RealEvalContext` (Stable Diffusion) with the real-image
judges'. A sweep with `eval.judges: serve` starts the service's application for its duration, and
each trial asks the service for its judges."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from igmu.errors import UsageError
from igmu.metrics.context import EvalContext, EvalSettings
from igmu.metrics.image_to_image import I2IEvalContext
from igmu.metrics.real_context import RealEvalContext
from igmu.models.real_judge_config import load_judges_config


@dataclass(frozen=True)
class JudgeService:
    config: Callable[[EvalSettings], object]   # the application's serve settings for an evaluation
    shared: Callable[[object], contextlib.AbstractContextManager]   # the application for a block
    judges: Callable[[EvalSettings], object]   # a trial's judges, as its context class takes them


def world_config(_evaluation: EvalSettings):
    from igmu.serve.config import load_serve_config

    return load_serve_config()


def world_shared(config):
    from igmu.serve.control import shared_judges

    return shared_judges(config)


def world_judges(_evaluation: EvalSettings):
    from igmu.serve.client import serve_judges

    return serve_judges()


def real_config(evaluation: EvalSettings):
    """The packaged real-judges serve settings with the evaluation's judges (file and CLIP model)."""
    from igmu.serve.config import load_real_serve_config

    judges = load_judges_config(evaluation.judges, evaluation.judge_overrides())
    return load_real_serve_config(None, {"judges": judges.model_dump(mode="json")})


@contextlib.contextmanager
def real_shared(config):
    """The real judges while the block runs; one already running must serve the same CLIP model."""
    from igmu.serve.control import shared_judges
    from igmu.serve.real_client import ServedRealJudges

    with shared_judges(config):
        ServedRealJudges(config.judges)  # checks the served CLIP before any trial starts
        yield


def real_judges(evaluation: EvalSettings):
    from igmu.serve.real_client import ServedRealJudges

    return ServedRealJudges(load_judges_config(evaluation.judges, evaluation.judge_overrides()))


WORLD_SERVICE = JudgeService(world_config, world_shared, world_judges)
SERVICES: dict[type, JudgeService] = {
    EvalContext: WORLD_SERVICE,
    I2IEvalContext: WORLD_SERVICE,
    RealEvalContext: JudgeService(real_config, real_shared, real_judges),
}


def service_for(context_class: type) -> JudgeService:
    if context_class not in SERVICES:
        raise UsageError(f"no judges application serves {context_class.__name__} evaluations; valid: "
                         f"eval.judges: local, or a model that {', '.join(c.__name__ for c in SERVICES)} scores")
    return SERVICES[context_class]
