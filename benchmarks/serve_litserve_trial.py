"""The LitServe counterpart of `bertforge serve`'s /answer, written to choose the serving stack
(docs/serving.md): the same Python API call behind LitServe's own dynamic batching. Not a
project dependency: `pip install litserve` to run it, then load it with
`python benchmarks/serve_load.py --url http://127.0.0.1:PORT`.

    python benchmarks/serve_litserve_trial.py CHECKPOINT --port 8001 --max_batch_size 32
"""

from __future__ import annotations

import argparse
import dataclasses

import litserve as ls

import bertforge


class AnswerAPI(ls.LitAPI):
    def __init__(self, checkpoint: str, **kwargs):
        super().__init__(**kwargs)
        self.checkpoint = checkpoint

    def setup(self, device):
        self.model = bertforge.load(self.checkpoint, device="cpu")

    def decode_request(self, request):
        return request["question"], request["context"]

    def batch(self, inputs):
        return inputs

    def predict(self, batch):
        answers = self.model.answer([q for q, _ in batch], [c for _, c in batch])
        return [dataclasses.asdict(a) for a in answers]

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        return output


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_timeout_ms", type=float, default=5.0)
    args = parser.parse_args()
    api = AnswerAPI(args.checkpoint, max_batch_size=args.max_batch_size,
                    batch_timeout=args.batch_timeout_ms / 1000, api_path="/answer")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, max_payload_size=1_000_000)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
