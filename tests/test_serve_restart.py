"""A Ray worker that talked to the judges keeps talking to them after Serve was shut down and started
again in the same job (a sweep's held-out stage runs in workers that earlier trials used)."""

import pytest

# Starts a real Ray Serve application twice.
pytestmark = pytest.mark.slow

SETTINGS = {"max_images_per_request": 8, "max_batch_size": 8, "deployment": {"max_ongoing_requests": 8, "num_replicas": 1,
                                                                              "ray_actor_options": {"num_cpus": 0.25}}}


def test_a_worker_finds_the_judges_after_serve_restarts(ray_session):
    import ray
    from ray import serve

    from igmu.serve.config import load_serve_config
    from igmu.serve.control import deploy_judges

    @ray.remote(num_cpus=0)
    class Scorer:
        def judge_names(self) -> list[str]:
            from igmu.serve.client import HandleJudgeClient

            return sorted(HandleJudgeClient().describe()["judges"])

    config = load_serve_config(None, SETTINGS)
    scorer = Scorer.remote()
    try:
        deploy_judges(config)
        before = ray.get(scorer.judge_names.remote())
        serve.shutdown()
        deploy_judges(config)
        assert ray.get(scorer.judge_names.remote()) == before
        assert before
    finally:
        ray.kill(scorer)
        serve.shutdown()
