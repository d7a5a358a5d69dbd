"""`bertforge serve`: a model's answer / classify / encode over HTTP and JSON.

- `config`: ServeArgs, the command's flags (limits, batching, address);
- `batcher`: dynamic batching, concurrent requests collected into one forward pass;
- `app`: the FastAPI application (endpoints, limits, errors) and `serve`, which runs it under
  uvicorn with graceful shutdown.

FastAPI and uvicorn come with the `serve` extra (`pip install "bertforge[serve]"`);
docs/serving.md says why this stack and records its measurements.
"""

from bertforge.serve.config import ServeArgs


def serve(args: ServeArgs) -> None:
    """Load the model and serve it until SIGINT or SIGTERM (see `app.serve`)."""
    from bertforge.serve.app import serve as run
    run(args)


__all__ = ["ServeArgs", "serve"]
