"""The OpenAI REST function (`rest.sock`): `uvicorn functions.chat:app` runs it on its own."""

from functions.app import create_app
from functions.runtime import DeferredApp

app = DeferredApp(create_app)
