"""A trained model put to work: rebuilt from its checkpoint (trained.py), served over HTTP with LitServe
(serve.py), exported to ONNX (export.py).

May import every other package; nothing imports it.
"""
