"""`igmu sweep`: the sweep file, its Tune search space and schedulers, the trainable, MLflow tracking and the results table."""
