"""A trained model put to work: rebuilt from its checkpoint (trained.py), served over HTTP with LitServe (serve_cli.py
checks the command and reduces the model to a servable, servable.py; serve.py is the lean server that runs it, its
workers waiting for requests, waiting_loop.py, and answering over ZeroMQ, answers.py; launch.py starts that server
while resolve.py reduces the model, side by side), exported to ONNX (export.py).

May import every other package; nothing imports it. serve.py and what it imports (servable.py, waiting_loop.py,
answers.py) import no Lightning and no torch.
"""
