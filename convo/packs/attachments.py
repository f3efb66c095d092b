"""Attachments: images, PDFs and other files as content blocks, with their media types detected.

What :meth:`convo.Image.from_file`, :meth:`convo.Image.from_bytes`,
:meth:`convo.Image.from_url`, :meth:`convo.Document.from_file` and
:func:`convo.attach` use.

The media type is read from the bytes with the ``filetype`` library
(``pip install 'convo[packs]'``), which knows images, PDFs, audio, video
and archives by their signatures; text formats have none, so a file that
``filetype`` does not recognise is typed by its name (``mimetypes``) or,
failing that, as ``text/plain`` when it decodes as UTF-8. Without
``filetype`` installed, names and the UTF-8 test are all there is: pass
``media_type=`` to be sure.

Sizes are checked before anything is read or sent: at most
:data:`MAX_IMAGE_BYTES` for an image and :data:`MAX_DOCUMENT_BYTES` for a
document by default (the largest any provider convo speaks to takes), or
``max_bytes=``; each provider checks its own, smaller limits again when it
builds a request (:class:`~convo.AttachmentTooLarge`), and refuses a type it
cannot take (:class:`~convo.UnsupportedContent`), before sending.

Text files (``text/*``, JSON, XML, YAML, CSV) become ``Document(text=...)``,
which every provider takes; PDFs become base64 documents (Anthropic and
OpenAI take them); other binary files become base64 documents of their
type, which a provider that cannot read them refuses with
UnsupportedContent.

Pure functions, so thread-safe.
"""

from __future__ import annotations

import base64
import mimetypes
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ArgumentTypeError, AttachmentTooLarge, ConfigurationError
from ..messages import Document, Image

__all__ = ["MAX_DOCUMENT_BYTES", "MAX_IMAGE_BYTES", "attach", "detect_media_type", "document_from_bytes",
           "document_from_file", "image_from_bytes", "image_from_file", "image_from_url"]

#: The default size limit of an image (OpenAI's; Anthropic takes 5 MB and says so when sending).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: The default size limit of a document (a PDF within Anthropic's and OpenAI's 32 MB).
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024

_TEXT_TYPES = ("application/json", "application/xml", "application/yaml", "application/x-yaml",
               "application/javascript", "application/x-sh", "application/sql", "application/toml")


def _sniff(raw: bytes) -> str | None:
    try:
        import filetype
    except ImportError:  # optional: names and the UTF-8 test still work
        return None
    kind = filetype.guess(raw[:8192])
    return kind.mime if kind is not None else None


def _is_text(raw: bytes) -> bool:
    if b"\x00" in raw[:8192]:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def is_text_type(media_type: str) -> bool:
    return media_type.startswith("text/") or media_type in _TEXT_TYPES or media_type.endswith(("+json", "+xml"))


def detect_media_type(raw: bytes, name: str | None = None) -> str | None:
    """The media type of ``raw`` (a file's bytes): by signature, else by ``name``, else text/plain if UTF-8.

    None when nothing tells.
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise ArgumentTypeError(f"expected bytes, got {type(raw).__name__}")
    found = _sniff(bytes(raw))
    if found:
        return found
    if name:
        guessed, _ = mimetypes.guess_type(name)
        if guessed:
            return guessed
    if raw and _is_text(bytes(raw)):
        return "text/plain"
    return None


def _limit(max_bytes: Any, default: int) -> int:
    if max_bytes is None:
        return default
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ConfigurationError(f"max_bytes must be a positive int, got {max_bytes!r}")
    return max_bytes


def _read(path: Any, limit: int, what: str) -> tuple[bytes, Path]:
    if not isinstance(path, (str, os.PathLike)):
        raise ArgumentTypeError(f"expected a file path, got {type(path).__name__}")
    file = Path(path).expanduser()
    size = file.stat().st_size  # FileNotFoundError for a missing file, as open() raises
    if size > limit:
        raise AttachmentTooLarge(f"{what} {file.name}", size, limit)
    return file.read_bytes(), file


def image_from_bytes(raw: bytes, media_type: str | None = None, *, max_bytes: int | None = None,
                     name: str | None = None) -> Image:
    """An :class:`~convo.Image` from raw bytes; the media type is detected unless given.

    Raises:
        AttachmentTooLarge: more than ``max_bytes`` (default :data:`MAX_IMAGE_BYTES`).
        ConfigurationError: the bytes are not an image (nor given a type).
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise ArgumentTypeError(f"Image.from_bytes takes bytes, got {type(raw).__name__}")
    limit = _limit(max_bytes, MAX_IMAGE_BYTES)
    if len(raw) > limit:
        raise AttachmentTooLarge(f"the image {name or ''}".rstrip(), len(raw), limit)
    if media_type is None:
        media_type = detect_media_type(raw, name)
        if media_type is None or not media_type.startswith("image/"):
            found = f"it looks like {media_type}" if media_type else "its type could not be told"
            raise ConfigurationError(f"{name or 'these bytes'} is not an image ({found}); pass media_type= if it "
                                     "is one, or use convo.Document / convo.attach for other files")
    elif not isinstance(media_type, str) or "/" not in media_type:
        raise ConfigurationError(f"media_type must be a MIME type such as 'image/png', got {media_type!r}")
    return Image(media_type=media_type, data=base64.b64encode(bytes(raw)).decode("ascii"))


def image_from_file(path: Any, media_type: str | None = None, *, max_bytes: int | None = None) -> Image:
    """An :class:`~convo.Image` from a file; its size is checked before it is read, its type detected."""
    limit = _limit(max_bytes, MAX_IMAGE_BYTES)
    raw, file = _read(path, limit, "the image")
    return image_from_bytes(raw, media_type, max_bytes=limit, name=file.name)


def image_from_url(url: str, media_type: str | None = None) -> Image:
    """An :class:`~convo.Image` the provider fetches from ``url`` (http, https or a ``data:`` URL).

    Nothing is downloaded here; the media type, if not given, is guessed
    from the URL's path (providers that fetch URLs do not need it).
    """
    if not isinstance(url, str):
        raise ArgumentTypeError(f"url must be a str, got {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "data") or (scheme != "data" and not urlsplit(url).netloc):
        raise ConfigurationError(f"an image URL must be http(s) or data:, got {url[:80]!r}")
    if media_type is None:
        if scheme == "data":
            head = url[5:].split(",", 1)[0]
            media_type = head.split(";", 1)[0] or None
        else:
            media_type, _ = mimetypes.guess_type(urlsplit(url).path)
    return Image(media_type=media_type, url=url)


def document_from_bytes(raw: bytes, media_type: str | None = None, *, title: str | None = None,
                        max_bytes: int | None = None) -> Document:
    """A :class:`~convo.Document` from raw bytes: text formats as text, anything else (PDFs) as base64.

    Raises:
        AttachmentTooLarge: more than ``max_bytes`` (default :data:`MAX_DOCUMENT_BYTES`).
        ConfigurationError: the type cannot be told (pass ``media_type=``),
            or text that is not UTF-8.
    """
    if not isinstance(raw, (bytes, bytearray)):
        raise ArgumentTypeError(f"expected bytes, got {type(raw).__name__}")
    limit = _limit(max_bytes, MAX_DOCUMENT_BYTES)
    if len(raw) > limit:
        raise AttachmentTooLarge(f"the document {title or ''}".rstrip(), len(raw), limit)
    raw = bytes(raw)
    if media_type is None:
        media_type = detect_media_type(raw, title)
        if media_type is None:
            raise ConfigurationError(f"the type of {title or 'this document'} could not be told; pass media_type=")
    if is_text_type(media_type):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConfigurationError(f"{title or 'the document'} is {media_type} but not UTF-8 text") from None
        return Document(media_type=media_type, text=text, title=title)
    return Document(media_type=media_type, data=base64.b64encode(raw).decode("ascii"), title=title)


def document_from_file(path: Any, media_type: str | None = None, *, title: str | None = None,
                       max_bytes: int | None = None) -> Document:
    """A :class:`~convo.Document` from a file (a PDF, a text file...); its title is the file's name by default."""
    limit = _limit(max_bytes, MAX_DOCUMENT_BYTES)
    raw, file = _read(path, limit, "the document")
    if media_type is None:
        media_type = detect_media_type(raw, file.name)
    return document_from_bytes(raw, media_type, title=title or file.name, max_bytes=limit)


def attach(source: Any, *, media_type: str | None = None, title: str | None = None,
           max_bytes: int | None = None) -> Image | Document:
    """Any file as content: an :class:`~convo.Image` for images, a :class:`~convo.Document` otherwise.

    ``source`` is a path, raw bytes, or an http(s) URL of an image.
    ``c.send("What is in this?", convo.attach("receipt.pdf"))``.

    Raises:
        AttachmentTooLarge: over ``max_bytes`` (default: the image or document limit).
        ConfigurationError: the type cannot be told (pass ``media_type=``).
    """
    if isinstance(source, str) and urlsplit(source).scheme.lower() in ("http", "https"):
        return image_from_url(source, media_type)
    if isinstance(source, (bytes, bytearray)):
        raw, name = bytes(source), title
    elif isinstance(source, (str, os.PathLike)):
        raw, file = _read(source, _limit(max_bytes, max(MAX_IMAGE_BYTES, MAX_DOCUMENT_BYTES)), "the file")
        name = file.name
    else:
        raise ArgumentTypeError(f"attach takes a path, bytes or an image URL, got {type(source).__name__}")
    kind = media_type or detect_media_type(raw, name)
    if kind is not None and kind.startswith("image/"):
        return image_from_bytes(raw, kind, max_bytes=max_bytes, name=name)
    return document_from_bytes(raw, kind, title=title or name, max_bytes=max_bytes)
