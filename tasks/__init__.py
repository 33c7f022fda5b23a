"""Task glue: each task declares its pieces (tasks.base.Task); tasks.runner runs them."""
