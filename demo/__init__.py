"""The Gradio chat demo: `llm2clip-llava demo` (see `demo.app`)."""
