"""The baseline of benchmarks/serve.py: a bare LitServe API around one `nn.Linear`, as LitServe's quick start has it.

It takes the same body as `lit_linreg serve`, `{"rows": [{feature: value, ...}, ...]}`, reads the listed numeric
features in order, checks nothing, and answers `{"predictions": [{name: value}, ...]}`, with the same batching.

Usage: `python benchmarks/bare_litserve.py --port 8001 --coefficients '{"features": [...], "weight": [[...]],
"bias": [...], "names": [...]}' --workers 1`
"""

import argparse
import json

import litserve as ls
import torch
from torch import nn


class LinearAPI(ls.LitAPI):
    def __init__(self, coefficients: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.coefficients = coefficients

    def setup(self, device: str) -> None:
        weight = torch.tensor(self.coefficients["weight"], dtype=torch.float32)  # (targets, features)
        self.model = nn.Linear(weight.shape[1], weight.shape[0]).eval()
        with torch.no_grad():
            self.model.weight.copy_(weight)
            self.model.bias.copy_(torch.tensor(self.coefficients["bias"]))
        self.features, self.names = self.coefficients["features"], self.coefficients["names"]

    def decode_request(self, request: dict) -> torch.Tensor:
        return torch.tensor([[row[f] for f in self.features] for row in request["rows"]], dtype=torch.float32)

    def batch(self, inputs: list) -> list:
        return list(inputs)

    def predict(self, inputs: list) -> list:
        with torch.inference_mode():
            y = self.model(torch.cat(inputs))
        return list(torch.split(y, [len(x) for x in inputs]))

    def encode_response(self, output: torch.Tensor) -> dict:
        return {"predictions": [dict(zip(self.names, row, strict=True)) for row in output.tolist()]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--coefficients", type=str, required=True, help="JSON: features, weight, bias, names")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max_batch_size", type=int, default=64)
    args = parser.parse_args()
    api = LinearAPI(json.loads(args.coefficients), max_batch_size=args.max_batch_size, batch_timeout=0.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers)
    server.run(port=args.port, generate_client_file=False, log_level="warning", access_log=False)
