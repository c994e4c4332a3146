"""Exports for the tools people run models in: a Hugging Face folder (`hf`), GGUF for llama.cpp / LM Studio
(`gguf`), an Ollama Modelfile beside it (`ollama`), and their commands (`cli`)."""
