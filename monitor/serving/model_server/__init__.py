"""Reference OpenAI-compatible model server for any local transformers causal LM.

``thermostat model-server --model PATH`` calls :func:`run_model_server`. Importing
this package pulls in FastAPI but not torch or transformers; those load when the
app starts and loads its model.
"""

from .app import check_model_path, create_model_server_app, run_model_server

__all__ = ["check_model_path", "create_model_server_app", "run_model_server"]
