"""igmu on Ray Serve: the detector judges as one batched application shared by every trial.

`app.build_app` is the application builder (`import_path: igmu.serve.app:build_app`), `client` holds
the typed clients and the `ServeJudge` the metrics receive, `control` starts, inspects and stops the
application. Only `app` and `control` import Ray at module level.
"""

APP_NAME = "judges"
DEPLOYMENT_NAME = "JudgeScorer"
