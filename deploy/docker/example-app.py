"""An example app: calls the OpenAI API through its sidecar (OPENAI_BASE_URL) every 10 seconds."""
import time

from openai import OpenAI

client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY come from the environment
while True:
    try:
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello in five words."}],
            stream=True,
            stream_options={"include_usage": True},
        )
        print("".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices), flush=True)
    except Exception as error:  # the sidecar answers in OpenAI's error shape; keep going
        print(f"request failed: {error}", flush=True)
    time.sleep(10)
