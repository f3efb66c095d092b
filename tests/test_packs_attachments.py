"""Attachments: media types detected from the bytes, size limits before sending, and both wire formats
checked on the bodies sent to a real server on 127.0.0.1."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

import convo
from convo import AnthropicService, Document, Image, Message, OpenAIService, Request
from convo.providers import anthropic, openai
from tests.servers import Reply, ScriptedHTTPServer


def png_bytes() -> bytes:
    """A real 1x1 PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


SAMPLES = {
    "image/png": png_bytes(),
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 32 + b"\xff\xd9",
    "image/gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,"
                 b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
    "image/webp": b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00",
    "application/pdf": b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n",
    "image/tiff": b"II*\x00\x08\x00\x00\x00" + b"\x00" * 16,
    "audio/mpeg": b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 16,
}


@pytest.fixture
def files(tmp_path):
    """The samples written to files whose names say nothing of their type."""
    out = {}
    for i, (kind, raw) in enumerate(SAMPLES.items()):
        path = tmp_path / f"file{i}.bin"
        path.write_bytes(raw)
        out[kind] = path
    return out


class TestDetection:
    @pytest.mark.parametrize("kind", ["image/png", "image/jpeg", "image/gif", "image/webp"])
    def test_images_are_typed_by_their_bytes(self, files, kind):
        image = Image.from_file(files[kind])
        assert image.media_type == kind and base64.b64decode(image.data) == SAMPLES[kind]
        assert Image.from_bytes(SAMPLES[kind]).media_type == kind

    def test_a_pdf_is_a_base64_document_titled_by_its_file_name(self, files):
        doc = Document.from_file(files["application/pdf"])
        assert (doc.media_type, doc.title, doc.text) == ("application/pdf", "file4.bin", None)
        assert base64.b64decode(doc.data) == SAMPLES["application/pdf"]

    def test_text_files_become_text_documents(self, tmp_path):
        (tmp_path / "notes.md").write_text("# Notes\nBuy milk.")
        (tmp_path / "table.csv").write_text("a,b\n1,2\n")
        (tmp_path / "data.json").write_text('{"a": 1}')
        (tmp_path / "README").write_text("plain words")
        kinds = {name: Document.from_file(tmp_path / name) for name in ("notes.md", "table.csv", "data.json",
                                                                        "README")}
        assert {n: d.media_type for n, d in kinds.items()} == {
            "notes.md": "text/markdown", "table.csv": "text/csv", "data.json": "application/json",
            "README": "text/plain"}
        assert kinds["table.csv"].text == "a,b\n1,2\n" and kinds["README"].title == "README"

    def test_attach_picks_image_or_document(self, files):
        assert isinstance(convo.attach(files["image/gif"]), Image)
        assert convo.attach(files["application/pdf"]).media_type == "application/pdf"
        assert convo.attach(b"just some text", title="t.txt").text == "just some text"
        assert convo.attach("https://example.com/cat.jpg").url == "https://example.com/cat.jpg"
        assert convo.attach(files["audio/mpeg"]).media_type == "audio/mpeg"

    def test_bytes_that_are_not_an_image_are_refused_by_image(self, files):
        with pytest.raises(convo.ConfigurationError, match="not an image"):
            Image.from_file(files["application/pdf"])
        assert Image.from_bytes(b"\x89PNG", "image/png").data == "iVBORw=="  # a given type is trusted

    def test_from_url(self):
        assert Image.from_url("https://example.com/a/b.png").media_type == "image/png"
        assert Image.from_url("data:image/gif;base64,R0lG").media_type == "image/gif"
        for bad in ("ftp://example.com/a.png", "/local/a.png", "https://"):
            with pytest.raises(convo.ConfigurationError):
                Image.from_url(bad)

    def test_unknown_binary_needs_a_media_type(self):
        with pytest.raises(convo.ConfigurationError, match="pass media_type="):
            Document.from_bytes(b"\x00\x01\x02\xff\xfe")
        assert Document.from_bytes(b"\x00\x01", "application/octet-stream").media_type == "application/octet-stream"

    def test_missing_files_raise_file_not_found(self, tmp_path):
        with pytest.raises(FileNotFoundError):
            Image.from_file(tmp_path / "nope.png")


class TestSizeLimits:
    def test_a_file_over_the_limit_is_refused_before_it_is_read(self, tmp_path):
        big = tmp_path / "huge.png"
        with big.open("wb") as f:
            f.truncate(21 * 1024 * 1024)  # sparse: nothing is really written, nor read
        with pytest.raises(convo.AttachmentTooLarge) as caught:
            Image.from_file(big)
        assert caught.value.size == 21 * 1024 * 1024 and caught.value.limit == 20 * 1024 * 1024
        with pytest.raises(convo.AttachmentTooLarge):
            Document.from_file(big, max_bytes=1024)

    def test_bytes_over_a_given_limit(self):
        with pytest.raises(convo.AttachmentTooLarge, match="over the limit of 10 bytes"):
            Image.from_bytes(SAMPLES["image/png"], max_bytes=10)
        with pytest.raises(convo.ConfigurationError):
            Image.from_bytes(SAMPLES["image/png"], max_bytes=0)

    def test_each_provider_checks_its_own_limit_before_sending(self):
        six_mb = Image(media_type="image/png", data=base64.b64encode(b"\x00" * (6 * 1024 * 1024)).decode())
        request = Request([Message.user("look", six_mb)])
        with pytest.raises(convo.AttachmentTooLarge, match="for Anthropic"):
            anthropic.to_wire(request, model="claude-sonnet-4-5", max_tokens=10)
        assert openai.to_wire(request, "gpt-4o")["messages"][0]["content"][0]["type"] == "image_url"


def anthropic_reply() -> Reply:
    return Reply.json({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                       "content": [{"type": "text", "text": "I see it."}], "stop_reason": "end_turn",
                       "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 3}})


def openai_reply() -> Reply:
    return Reply.json({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "I see it."},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})


class TestOnTheWire:
    def test_anthropic_image_and_document_source_blocks(self, files):
        image = Image.from_file(files["image/webp"])
        pdf = Document.from_file(files["application/pdf"])
        with ScriptedHTTPServer([anthropic_reply()]) as server:
            with AnthropicService(base_url=server.url, api_key="k") as service:
                convo.Convo(service, prompt_caching=False).send("What are these?", image, pdf,
                                                                Image.from_url("https://example.com/x.png"))
        [content] = [m["content"] for m in server.requests[0].json()["messages"]]
        assert content == [
            {"type": "image", "source": {"type": "base64", "media_type": "image/webp",
                                         "data": base64.b64encode(SAMPLES["image/webp"]).decode()}},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": base64.b64encode(SAMPLES["application/pdf"]).decode()},
             "title": "file4.bin"},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}},
            {"type": "text", "text": "What are these?"},
        ]

    def test_openai_image_url_data_urls_and_file_parts(self, files):
        image = Image.from_file(files["image/jpeg"])
        pdf = Document.from_file(files["application/pdf"], title="report.pdf")
        with ScriptedHTTPServer([openai_reply()]) as server:
            with OpenAIService("gpt-4o", base_url=server.url + "/v1", api_key="k") as service:
                convo.Convo(service).send("What are these?", image, pdf)
        [message] = server.requests[0].json()["messages"]
        jpeg = base64.b64encode(SAMPLES["image/jpeg"]).decode()
        pdf_data = base64.b64encode(SAMPLES["application/pdf"]).decode()
        assert message == {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{jpeg}"}},
            {"type": "file", "file": {"filename": "report.pdf",
                                      "file_data": f"data:application/pdf;base64,{pdf_data}"}},
            {"type": "text", "text": "What are these?"},
        ]}

    def test_text_documents_go_inline_on_both(self, tmp_path):
        (tmp_path / "t.csv").write_text("a,b\n1,2\n")
        doc = Document.from_file(tmp_path / "t.csv")
        a = anthropic.to_wire(Request([Message.user("sum it", doc)]), model="m", max_tokens=5)
        o = openai.to_wire(Request([Message.user("sum it", doc)]), "m")
        assert a["messages"][0]["content"][0] == {"type": "document", "title": "t.csv", "source": {
            "type": "text", "media_type": "text/csv", "data": "a,b\n1,2\n"}}
        assert o["messages"][0]["content"] == "t.csv\n\na,b\n1,2\n\n\nsum it"

    @pytest.mark.parametrize("kind", ["image/tiff", "audio/mpeg"])
    def test_what_a_provider_cannot_take_is_unsupported_content_and_nothing_is_sent(self, files, kind):
        block = convo.attach(files[kind])
        with ScriptedHTTPServer([anthropic_reply(), openai_reply()]) as server:
            with AnthropicService(base_url=server.url, api_key="k") as a, \
                    OpenAIService("gpt-4o", base_url=server.url + "/v1", api_key="k") as o:
                for service, name in ((a, "anthropic"), (o, "openai")):
                    c = convo.Convo(service)
                    with pytest.raises(convo.UnsupportedContent) as caught:
                        c.send("what is this?", block)
                    assert caught.value.provider == name and kind in str(caught.value)
                    assert c.messages == []
        assert server.requests == []
