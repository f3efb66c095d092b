"""A remote session: ``convo serve --dev`` runs the model, this script is the client and runs the tool.

    python examples/remote_session.py

It starts ``convo serve --dev --model local`` (the embedded SmolLM2, no API
key, no network) as a separate process, reads the address and the ready
token it prints, and opens a session with :class:`convo.remote.Client`.
The tool ``order_status`` is an ordinary ``@tool`` function that runs here,
in the client: when the model on the server calls it, the server sends a
``tool_call`` frame, the client runs the function and sends the result back.
Then it prints the messages, the result and what the turn cost ($0 locally).
"""

from __future__ import annotations

import subprocess
import sys
import time

from convo import tool
from convo.remote import AssistantMessage, Client, ResultMessage, UserMessage

PROMPT = "Where is my order A-1234?"
ORDERS = {"A-1234": "shipped on 2 March, arriving 5 March"}


@tool
def order_status(order_id: str) -> str:
    """Look up the delivery status of an order.

    Args:
        order_id: the order's id, such as "A-1234".
    """
    print(f"  [client] running order_status({order_id!r})")
    return ORDERS.get(order_id.strip().upper(), "no such order")


def start_server() -> tuple[subprocess.Popen, str, str]:
    """``convo serve --dev`` on a free port; the process, its WebSocket address and the token it printed."""
    server = subprocess.Popen([sys.executable, "-m", "convo.cli", "serve", "--dev", "--model", "local", "--port", "0",
                               "--store", "sqlite:///remote-example.db"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = token = None
    deadline = time.monotonic() + 60
    while (url is None or token is None) and time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            break
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].split()[0]
        elif line.startswith("eyJ"):
            token = line.strip()
    if url is None or token is None:
        server.kill()
        raise SystemExit("convo serve did not start")
    return server, url, token


def main() -> None:
    server, url, token = start_server()
    print(f"server: {url}")
    try:
        with Client(url, token, timeout=120) as client:
            with client.create_session(tools=[order_status], max_turns=3, tool_choice="any",
                                       system_prompt="You help customers. Call order_status once, then answer the customer in one sentence.") as s:
                print(f"session: {s.session_id}")
                result = None
                for message in s.send_and_stream(PROMPT):
                    if isinstance(message, AssistantMessage):
                        for call in message.tool_uses:
                            print(f"  [model] calls {call.name}({call.input})")
                        if message.text:
                            print(f"  [model] {message.text}")
                    elif isinstance(message, UserMessage):
                        print(f"  [server] tool result: {message.content[0].text()!r}")
                    elif isinstance(message, ResultMessage):
                        result = message
        print(f"result ({result.subtype}, {result.num_turns} model replies): {result.result}")
        print(f"cost: ${result.total_cost_usd} for {result.usage.input_tokens} tokens in, "
              f"{result.usage.output_tokens} out")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
