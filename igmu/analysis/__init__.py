"""Reading finished sweeps: Pareto fronts, the leaderboard, reports and the MLflow tags they leave."""
