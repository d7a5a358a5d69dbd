"""`bertforge serve`: a model's answer / classify / encode over HTTP.

- `config`: ServeArgs, the command's flags (no torch: read for --help);
- `server`: listening, loading the model behind a live server, draining on SIGTERM;
- `app`: the FastAPI application: simple JSON routes, health, metrics, errors;
- `v2`: the Open Inference Protocol (KServe v2) on named tensors;
- `guard`: Host, token, content type, body size and slow-client limits;
- `service`: the model side: loading, then requests prepared, scheduled and finished;
- `batcher`: the scheduler: windows of several requests in each forward pass, in turn;
- `work`: what each endpoint asks of the Python API's Predictor;
- `metrics`: Prometheus metrics.

FastAPI, uvicorn and prometheus_client come with the `serve` extra (`pip install
"bertforge[serve]"`); docs/serving.md says how the server behaves and why this stack.
"""

from collections.abc import Mapping

from bertforge.serve.config import ServeArgs


def serve(args: ServeArgs, environ: Mapping[str, str] | None = None) -> None:
    """Serve the model until SIGINT or SIGTERM (see `server.serve`). `environ` holds the
    variable --auth_token_env names (the command passes its environment)."""
    from bertforge.serve.server import serve as run
    run(args, environ or {})


__all__ = ["ServeArgs", "serve"]
