"""`GET /docs`: the OpenAPI document rendered as one plain HTML page — no JavaScript, nothing
fetched from the internet, so it works behind any firewall and leaks no visitor to a CDN."""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["docs_html"]

_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")
_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2.5rem}
.op{border:1px solid #ddd;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
.m{font-weight:bold;text-transform:uppercase;display:inline-block;min-width:4.5rem}
code,pre{background:#f5f5f5;padding:.1rem .3rem;border-radius:3px}
pre{padding:.5rem;overflow-x:auto;font-size:13px}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
"""


def _schema_label(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    return f"<pre>{html.escape(json.dumps(schema, ensure_ascii=False, indent=1))}</pre>"


def _security_label(security: list[dict[str, Any]]) -> str:
    names = [name for requirement in security for name in requirement]
    return ", ".join(names) if names else "nenhuma"


def docs_html(doc: dict[str, Any]) -> str:
    """A self-contained HTML page rendered from the OpenAPI document `doc`."""
    esc = html.escape
    out = [
        "<!doctype html><html lang='pt-BR'><head><meta charset='utf-8'>",
        f"<title>{esc(doc['info']['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(doc['info']['title'])} <small>{esc(doc['info']['version'])}</small></h1>",
        f"<p>{esc(doc['info']['description'])}</p>",
        "<p>Documento-fonte: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>",
        "<h2>Autenticação</h2><ul>",
    ]
    for name, scheme in doc["components"]["securitySchemes"].items():
        out.append(f"<li><b>{esc(name)}</b> ({esc(scheme['type'])}): ")
        out.append(f"{esc(scheme.get('description', ''))}</li>")
    out.append("</ul><h2>Rotas</h2>")
    for path, item in doc["paths"].items():
        shared = item.get("parameters", [])
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            out.append(f"<div class='op' id='{esc(op['operationId'])}'>")
            out.append(f"<h3><span class='m'>{method}</span> <code>{esc(path)}</code></h3>")
            out.append(f"<p><b>{esc(op['summary'])}</b></p>")
            if op.get("description"):
                out.append(f"<p>{esc(op['description'])}</p>")
            security = op.get("security", doc["security"])
            out.append(f"<p>Autenticação: {esc(_security_label(security))}</p>")
            params = [*shared, *op.get("parameters", [])]
            if params:
                out.append("<table><tr><th>parâmetro</th><th>em</th><th>obrigatório</th>")
                out.append("<th>esquema</th><th>descrição</th></tr>")
                for p in params:
                    out.append(
                        f"<tr><td><code>{esc(p['name'])}</code></td><td>{esc(p['in'])}</td>"
                        f"<td>{'sim' if p.get('required') else 'não'}</td>"
                        f"<td><code>{esc(json.dumps(p.get('schema', {})))}</code></td>"
                        f"<td>{esc(p.get('description', ''))}</td></tr>"
                    )
                out.append("</table>")
            body = op.get("requestBody")
            if body:
                for media, content in body["content"].items():
                    out.append(f"<p>Corpo (<code>{esc(media)}</code>): ")
                    out.append(_schema_label(content["schema"]) + "</p>")
            out.append("<table><tr><th>status</th><th>resposta</th><th>corpo</th></tr>")
            for status, response in op["responses"].items():
                content = response.get("content", {})
                label = ", ".join(
                    f"<code>{esc(media)}</code> {_schema_label(c['schema'])}"
                    for media, c in content.items()
                )
                out.append(
                    f"<tr><td>{esc(status)}</td><td>{esc(response['description'])}</td>"
                    f"<td>{label}</td></tr>"
                )
            out.append("</table></div>")
    out.append("<h2>Esquemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        out.append(f"<h3 id='schema-{esc(name)}'>{esc(name)}</h3>")
        out.append(f"<pre>{esc(json.dumps(schema, ensure_ascii=False, indent=1))}</pre>")
    out.append("</body></html>")
    return "".join(out)
