"""MCP values to convo values: pure functions over the JSON an MCP server sends.

Nothing here touches the SDK, a socket or a thread: a listed tool
(``tools/list``'s ``{"name", "description", "inputSchema", ...}``) becomes
the name, description and schema of a :class:`convo.Tool`, and a
``tools/call`` result (``{"content": [...], "structuredContent": ...,
"isError": ...}``) becomes a :class:`convo.ToolOut`. Both take the camelCase
JSON of the wire (``model_dump(by_alias=True, mode="json")`` of the SDK's
models), so they are tested on exactly what servers send.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from .messages import Document, Image, Text
from .tools import ToolOut

__all__ = ["MalformedResult", "UnusableTool", "convo_tool_name", "result_out", "tool_parts"]

_NAME_MAX = 64
_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")


class MalformedResult(ValueError):
    """A ``tools/call`` result that does not have the shape the protocol gives it."""


class UnusableTool(ValueError):
    """A listed tool convo cannot offer to a model (no name, or an input schema that is not an object)."""


def convo_tool_name(server: str, tool: str) -> str:
    """The name the model sees for ``tool`` of ``server``: ``mcp__{server}__{tool}``.

    Characters a model's tool name may not hold (MCP allows ``.`` and ``/``)
    become ``_``; a name longer than 64 characters is cut and ends with a
    hash of the whole, so two long names stay distinct.
    """
    name = _BAD_CHARS.sub("_", f"mcp__{server}__{tool}")
    if len(name) > _NAME_MAX:
        digest = hashlib.sha1(f"{server}\0{tool}".encode()).hexdigest()[:8]
        name = f"{name[:_NAME_MAX - 9]}_{digest}"
    return name


def tool_parts(tool: dict) -> tuple[str, str, dict]:
    """The MCP name, the description and the input schema of a listed tool.

    A schema without ``"type"`` is taken as an object (servers written before
    the spec insisted omit it). The description falls back to the title.

    Raises:
        UnusableTool: no name, or an input schema that is not an object.
    """
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise UnusableTool(f"a listed tool has no name: {_short(tool)}")
    schema = tool.get("inputSchema")
    if schema is None:
        schema = {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise UnusableTool(f"tool {name!r}: inputSchema is not an object")
    if "type" not in schema:
        schema = {"type": "object", **schema}
    if schema.get("type") != "object":
        raise UnusableTool(f"tool {name!r}: inputSchema has type {schema.get('type')!r}, not 'object'")
    description = tool.get("description") or tool.get("title") or ""
    if not isinstance(description, str):
        description = str(description)
    return name, description, schema


def result_out(server: str, tool: str, result: dict) -> ToolOut:
    """What the model reads for a ``tools/call`` result.

    Text is text; images are images; an embedded resource is a document
    (text, or a PDF) or an image, and other binary resources are described
    in words; a resource link names its URI; audio is described in words
    (no provider takes audio in a tool result). Structured content is kept
    as ``display`` and, when the server sent no content blocks, sent to the
    model as its JSON. ``isError`` stays an error result.

    Raises:
        MalformedResult: ``result`` is not a result object, or its content is
            not a list of content blocks.
    """
    if not isinstance(result, dict):
        raise MalformedResult(f"the result is {type(result).__name__}, not an object")
    content = result.get("content", [])
    if not isinstance(content, list):
        raise MalformedResult(f"content is {type(content).__name__}, not a list")
    blocks: list = []
    for item in content:
        blocks.extend(_blocks(item))
    structured = result.get("structuredContent")
    if not blocks and structured is not None:
        blocks.append(Text(json.dumps(structured, ensure_ascii=False)))
    is_error = result.get("isError") is True
    if is_error and not blocks:
        blocks.append(Text(f"tool {tool!r} of MCP server {server!r} failed and said nothing more"))
    return ToolOut(tuple(blocks) if blocks else None, display=structured, error=is_error)


def _blocks(item: Any) -> list:
    if not isinstance(item, dict):
        raise MalformedResult(f"a content block is {type(item).__name__}, not an object")
    kind = item.get("type")
    if kind == "text":
        return [Text(_field(item, "text", str))]
    if kind == "image":
        return [Image(media_type=_field(item, "mimeType", str), data=_field(item, "data", str))]
    if kind == "audio":
        size = len(_field(item, "data", str)) * 3 // 4
        return [Text(f"[audio ({item.get('mimeType', 'unknown type')}, about {size} bytes) not shown: "
                     "audio cannot be passed on to the model]")]
    if kind == "resource":
        resource = item.get("resource")
        if not isinstance(resource, dict):
            raise MalformedResult("an embedded resource has no resource object")
        return [_resource(resource)]
    if kind == "resource_link":
        uri = _field(item, "uri", str)
        words = [f"[resource link: {uri}"]
        for key in ("name", "mimeType", "description"):
            if isinstance(item.get(key), str) and item[key]:
                words.append(f"{key}: {item[key]}")
        return [Text("; ".join(words) + "]")]
    return [Text(f"[content of type {kind!r} not shown: convo does not know it]")]


def _resource(resource: dict) -> Any:
    uri = _field(resource, "uri", str)
    media_type = resource.get("mimeType") if isinstance(resource.get("mimeType"), str) else None
    if "text" in resource:
        return Document(media_type=media_type or "text/plain", text=_field(resource, "text", str), title=uri)
    blob = _field(resource, "blob", str)
    if media_type is not None and media_type.startswith("image/"):
        return Image(media_type=media_type, data=blob)
    if media_type == "application/pdf":
        return Document(media_type=media_type, data=blob, title=uri)
    return Text(f"[resource {uri} ({media_type or 'binary'}, about {len(blob) * 3 // 4} bytes) not shown: "
                "convo passes on text, images and PDFs only]")


def _field(item: dict, key: str, kind: type) -> Any:
    value = item.get(key)
    if not isinstance(value, kind):
        raise MalformedResult(f"a {item.get('type', 'content')!r} block has no {key} {kind.__name__}")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 200 else text[:200] + "..."
