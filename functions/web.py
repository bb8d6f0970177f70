"""The OpenAI API behind the Hero router (`web_v1.sock`): `X-Forwarded-Prefix` honoured, `/v1` optional."""

from functions.app import create_app
from functions.runtime import DeferredApp
from functions.config import BrokerConfig

app = DeferredApp(lambda config: create_app(config, unprefixed=True))


def create_web_app(config: BrokerConfig, **kwargs: object) -> object:
    return create_app(config, unprefixed=True, **kwargs)  # type: ignore[arg-type]
