"""convo._mcp_wire: MCP's JSON to convo's values, on the exact JSON servers send."""

from __future__ import annotations

import pytest

from convo import Document, Image, Text, Tool, ToolOut
from convo._mcp_wire import (
    MalformedResult,
    UnusableTool,
    convo_tool_name,
    result_out,
    tool_parts,
)

# As mcp-server-time lists it (2026-07-28, trimmed).
GET_CURRENT_TIME = {
    "name": "get_current_time",
    "description": "Get current time in a specific timezone",
    "inputSchema": {
        "type": "object",
        "properties": {"timezone": {"type": "string", "description": "IANA timezone name"}},
        "required": ["timezone"],
    },
    "outputSchema": {"type": "object", "properties": {"timezone": {"type": "string"}}},
    "annotations": {"readOnlyHint": True},
}


class TestToolNames:
    def test_prefixed_with_the_server(self):
        assert convo_tool_name("time", "get_current_time") == "mcp__time__get_current_time"

    def test_characters_a_model_refuses_become_underscores(self):
        assert convo_tool_name("fs", "files.read/all") == "mcp__fs__files_read_all"

    def test_long_names_are_cut_to_64_and_stay_distinct(self):
        a = convo_tool_name("server", "x" * 80 + "a")
        b = convo_tool_name("server", "x" * 80 + "b")
        assert len(a) == len(b) == 64 and a != b
        Tool(a, "", {"type": "object"}, lambda _: None)  # a valid tool name


class TestToolParts:
    def test_name_description_and_schema(self):
        name, description, schema = tool_parts(GET_CURRENT_TIME)
        assert (name, description) == ("get_current_time", "Get current time in a specific timezone")
        assert schema == GET_CURRENT_TIME["inputSchema"]

    def test_a_schema_without_a_type_is_an_object(self):
        _, _, schema = tool_parts({"name": "t", "inputSchema": {"properties": {}}})
        assert schema == {"type": "object", "properties": {}}

    def test_the_title_stands_in_for_a_missing_description(self):
        assert tool_parts({"name": "t", "title": "A title", "inputSchema": {"type": "object"}})[1] == "A title"

    @pytest.mark.parametrize("listed", [
        {"inputSchema": {"type": "object"}},
        {"name": "t", "inputSchema": {"type": "array"}},
        {"name": "t", "inputSchema": ["not", "an", "object"]},
    ])
    def test_unusable_tools_are_refused(self, listed):
        with pytest.raises(UnusableTool):
            tool_parts(listed)


class TestResults:
    def test_text(self):
        out = result_out("s", "t", {"content": [{"type": "text", "text": "hi"}], "isError": False})
        assert out == ToolOut((Text("hi"),), display=None, error=False)

    def test_structured_content_is_display_and_is_sent_only_without_blocks(self):
        both = result_out("s", "t", {"content": [{"type": "text", "text": '{"a": 1}'}], "structuredContent": {"a": 1}})
        assert both.content == (Text('{"a": 1}'),) and both.display == {"a": 1}
        alone = result_out("s", "t", {"content": [], "structuredContent": {"a": "é"}})
        assert alone.content == (Text('{"a": "é"}'),)

    def test_image(self):
        out = result_out("s", "t", {"content": [{"type": "image", "data": "iVBOR", "mimeType": "image/png"}]})
        assert out.content == (Image(media_type="image/png", data="iVBOR"),)

    def test_embedded_resources(self):
        out = result_out("s", "t", {"content": [
            {"type": "resource", "resource": {"uri": "file:///a.md", "mimeType": "text/markdown", "text": "# A"}},
            {"type": "resource", "resource": {"uri": "file:///b.txt", "text": "b"}},
            {"type": "resource", "resource": {"uri": "file:///c.png", "mimeType": "image/png", "blob": "iVBOR"}},
            {"type": "resource", "resource": {"uri": "file:///d.pdf", "mimeType": "application/pdf", "blob": "JVBE"}},
            {"type": "resource", "resource": {"uri": "file:///e.zip", "mimeType": "application/zip", "blob": "AAAA"}},
        ]})
        a, b, c, d, e = out.content
        assert a == Document(media_type="text/markdown", text="# A", title="file:///a.md")
        assert b == Document(media_type="text/plain", text="b", title="file:///b.txt")
        assert c == Image(media_type="image/png", data="iVBOR")
        assert d == Document(media_type="application/pdf", data="JVBE", title="file:///d.pdf")
        assert e.text == ("[resource file:///e.zip (application/zip, about 3 bytes) not shown: "
                          "convo passes on text, images and PDFs only]")

    def test_resource_links_and_audio_are_described(self):
        link, audio = result_out("s", "t", {"content": [
            {"type": "resource_link", "uri": "https://x.invalid/r", "name": "r", "description": "the r"},
            {"type": "audio", "data": "AAAAAAAA", "mimeType": "audio/wav"},
        ]}).content
        assert link.text == "[resource link: https://x.invalid/r; name: r; description: the r]"
        assert audio.text.startswith("[audio (audio/wav, about 6 bytes) not shown")

    def test_an_unknown_block_type_is_described_not_fatal(self):
        (block,) = result_out("s", "t", {"content": [{"type": "hologram"}]}).content
        assert block.text == "[content of type 'hologram' not shown: convo does not know it]"

    def test_is_error_stays_an_error(self):
        out = result_out("s", "t", {"content": [{"type": "text", "text": "bad zone"}], "isError": True})
        assert out.error and out.content == (Text("bad zone"),)

    def test_an_error_without_content_names_the_tool_and_server(self):
        out = result_out("time", "get_current_time", {"content": [], "isError": True})
        assert out.content == (Text("tool 'get_current_time' of MCP server 'time' failed and said nothing more"),)

    def test_no_content_at_all_is_an_empty_result(self):
        assert result_out("s", "t", {"content": []}) == ToolOut(None, display=None, error=False)

    @pytest.mark.parametrize("result", [
        "not an object",
        {"content": "not a list"},
        {"content": ["not a block"]},
        {"content": [{"type": "text"}]},
        {"content": [{"type": "image", "data": 5, "mimeType": "image/png"}]},
        {"content": [{"type": "resource"}]},
        {"content": [{"type": "resource", "resource": {"uri": "file:///x"}}]},
    ])
    def test_malformed_results_are_refused(self, result):
        with pytest.raises(MalformedResult):
            result_out("s", "t", result)
