"""The embedded concept world: concepts, prompt sets, the renderer and the training data drawn from it."""
