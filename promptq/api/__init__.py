"""The HTTP API: native jobs and the OpenAI Files/Batches workflow."""
