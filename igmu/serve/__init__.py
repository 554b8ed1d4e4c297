"""igmu on Ray Serve: the detector judges as batched applications shared by every trial.

Two applications: `judges` (the world's detector judges; `app.build_app`, clients in `client`) and
`igmu-real-judges` (the real-image judges, CLIP and NudeNet; `real_app.build_app`, client in
`real_client`). `control` starts, inspects and stops either; `services` says which one an evaluation
context uses. Only `app`, `real_app` and `control` import Ray at module level.
"""

APP_NAME = "judges"
DEPLOYMENT_NAME = "JudgeScorer"
REAL_APP_NAME = "igmu-real-judges"
REAL_DEPLOYMENT_NAME = "RealJudgeScorer"
# The deployment each application runs (one per application).
DEPLOYMENTS = {APP_NAME: DEPLOYMENT_NAME, REAL_APP_NAME: REAL_DEPLOYMENT_NAME}
