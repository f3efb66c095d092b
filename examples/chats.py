"""The chats API: a chat that runs on the server, a message queued while it runs, the live stream.

    python examples/chats.py

It starts ``convo serve --dev --model local`` (the embedded SmolLM2, no API
key, no network) as a separate process and reads the address and the ready
token it prints (a ``--dev`` token is an admin's). With
:class:`convo.chats.ChatsClient` it caps the default model config's reply
length (an admin route), creates a chat, posts a second message while the
first runs (the server queues it and takes it up when the run ends),
follows the chat's stream (a snapshot, then live text as the model writes
it, status changes, the queue), and prints the chat's messages and cost
($0 locally).
"""

from __future__ import annotations

import subprocess
import sys
import time

from convo.chats import ChatsClient, ChatStatus

FIRST = "Name three primary colours."
SECOND = "Now name three secondary colours."


def start_server() -> tuple[subprocess.Popen, str, str]:
    """``convo serve --dev`` on a free port; the process, the chats API's address and the token it printed."""
    server = subprocess.Popen([sys.executable, "-m", "convo.cli", "serve", "--dev", "--model", "local", "--port", "0",
                               "--store", "sqlite:///chats-example.db"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = token = None
    deadline = time.monotonic() + 60
    while (url is None or token is None) and time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            break
        if "chats API on " in line:
            url = line.split("chats API on ", 1)[1].split()[0]
        elif line.startswith("eyJ"):
            token = line.strip()
    if url is None or token is None:
        server.kill()
        raise SystemExit("convo serve did not start")
    return server, url, token


def main() -> None:
    server, url, token = start_server()
    print(f"chats API: {url}")
    try:
        with ChatsClient(url, token, timeout=120) as client:
            default = next(c for c in client.list_model_configs() if c.is_default)
            client.update_model_config(default.id, model_config={"max_output_tokens": 48})
            print(f"model: {default.provider}:{default.model} (replies capped at 48 tokens)")

            chat = client.create_chat(FIRST)
            posted = client.create_message(chat.id, SECOND)
            print(f"chat {chat.id}: {chat.status.value}; second message queued: {posted.queued}")

            taken_up = False  # the queued message became the chat's next user message
            with client.stream(chat.id, timeout=120) as events:
                for event in events:
                    if event.type == "message_part" and event.part.type == "text":
                        print(event.part.text, end="", flush=True)
                    elif event.type == "message" and event.message.role == "assistant":
                        print()
                    elif event.type == "message" and event.message.text() == SECOND:
                        taken_up = True
                    elif event.type == "queue_update":
                        print(f"[queue: {len(event.queued_messages)} waiting]")
                    elif event.type == "status":
                        print(f"[status: {event.status.value}]")
                        if event.status == ChatStatus.WAITING and taken_up:
                            break

            final = client.get_chat(chat.id)
            print("\nmessages:")
            for message in final.messages:
                print(f"  {message.role:<9} {' '.join(message.text().split())}")
            usage = final.chat.total_usage
            print(f"cost: ${usage.cost_usd} for {usage.input_tokens} tokens in, {usage.output_tokens} out "
                  f"({usage.responses} model replies)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
