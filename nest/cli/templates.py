"""What `nest init` writes: a manifest and a handler per style, each accepted by `parse_manifest` as is."""

from __future__ import annotations

MANIFEST = """\
name: {name}
handler: {handler}
handler_style: {style}
timeout: 30s
memory: 256Mi
concurrency: 10
# scaling:
#   min: 0                    # instances kept with no traffic
#   max: 10
#   utilization: 0.7          # scale ahead at 70% of concurrency per instance
#   scale_down_delay: 0s        # hold a higher windowed need this long before scaling down
#   scale_to_zero_grace: 60s
"""

HANDLERS = {
    "native": (
        "main:handle",
        '''\
def handle(request):
    """Called for every request to /function/{name}. Return a dict for JSON."""
    name = request.json().get("name", "world")
    return {{"hello": name}}
''',
    ),
    "asgi": (
        "main:app",
        """\
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hello(request):
    return JSONResponse({{"hello": request.query_params.get("name", "world")}})


app = Starlette(routes=[Route("/", hello, methods=["GET", "POST"])])
""",
    ),
    "lambda": (
        "main:handler",
        """\
import json


def handler(event, context):
    body = json.loads(event.get("body") or "{{}}")
    return {{"statusCode": 200, "body": json.dumps({{"hello": body.get("name", "world")}})}}
""",
    ),
}


def render(name: str, style: str) -> dict[str, str]:
    """File name -> content for a new function directory."""
    handler, code = HANDLERS[style]
    return {"nest.yaml": MANIFEST.format(name=name, handler=handler, style=style), "main.py": code.format(name=name)}
