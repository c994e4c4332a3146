"""The Ollama Modelfile: what it says, and (where Go is installed) that its template renders our ChatML.

Ollama is not installable from the registries these machines reach, but its templates are Go's
text/template over ``.System``, ``.Messages`` (``.Role``, ``.Content``) and ``.Prompt``; where ``go``
is on PATH the template is executed by Go itself and compared with the text training used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from common.outputs import OutputError
from model.cli import cli
from model.export.ollama import (
    CHATML_GO_TEMPLATE,
    RAW_TEMPLATE,
    modelfile_text,
    ollama_model_name,
    write_modelfile,
)
from prep.chat_template import chatml_text
from tests.model.conftest import save_tiny

GO_RENDER = r"""
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct{ Role, Content string }
type Data struct {
	System, Prompt string
	Messages       []Message
}

func main() {
	var d Data
	if err := json.Unmarshal([]byte(os.Args[2]), &d); err != nil {
		panic(err)
	}
	t := template.Must(template.New("m").Parse(os.Args[1]))
	if err := t.Execute(os.Stdout, d); err != nil {
		panic(err)
	}
}
"""


def test_chat_modelfile(tmp_path):
    text = modelfile_text("model-f16.gguf", chat=True, context=256, source="runs/sft")
    assert text.startswith("# Ollama Modelfile written by zh-mini-llm\n")
    assert "\nFROM ./model-f16.gguf\n" in text
    assert f'\nTEMPLATE """{CHATML_GO_TEMPLATE}"""\n' in text
    assert re.findall(r'PARAMETER stop "(.*)"', text) == ["<|im_end|>", "<|endoftext|>"]
    assert "\nPARAMETER num_ctx 256\n" in text and "\nPARAMETER num_predict 128\n" in text
    assert "\nPARAMETER temperature 0.8\n" in text and "\nPARAMETER top_k 50\n" in text


def test_base_modelfile_has_the_raw_prompt_template():
    text = modelfile_text("m.gguf", chat=False, context=64, source="runs/t")
    assert f'TEMPLATE """{RAW_TEMPLATE}"""' in text
    assert re.findall(r'PARAMETER stop "(.*)"', text) == ["<|endoftext|>"]


def test_foreign_modelfile_is_refused_ours_replaced(tmp_path):
    gguf_file = tmp_path / "model-f16.gguf"
    (tmp_path / "Modelfile").write_text("FROM llama3\n")
    with pytest.raises(OutputError, match="not a Modelfile written by this project"):
        write_modelfile(gguf_file, True, 64, "runs/sft")
    assert (tmp_path / "Modelfile").read_text() == "FROM llama3\n"
    (tmp_path / "Modelfile").unlink()
    write_modelfile(gguf_file, True, 64, "runs/sft")
    path = write_modelfile(gguf_file, False, 64, "runs/sft")
    assert "{{ .Prompt }}" in path.read_text() and not list(tmp_path.glob(".*partial"))


def test_model_names_ollama_accepts():
    assert ollama_model_name("zh-mini-llm sft") == "zh-mini-llm-sft"
    assert ollama_model_name("zh-mini-llm My Run · pretrain") == "zh-mini-llm-my-run-pretrain"


def test_ollama_command_writes_gguf_and_modelfile(tmp_path, cut_qwen2):
    run = save_tiny(tmp_path / "my run", "sft", tokenizer=cut_qwen2, vocab_size=512)
    result = CliRunner().invoke(cli, ["ollama", "--ckpt", str(run), "--type", "q8_0"])
    assert result.exit_code == 0, result.output
    assert (run / "model-q8_0.gguf").is_file()
    assert "FROM ./model-q8_0.gguf" in (run / "Modelfile").read_text()
    assert f"ollama create zh-mini-llm-my-run-sft -f '{run / 'Modelfile'}'" in result.output


def go_render(tmp_path, template: str, data: dict) -> str:
    source = tmp_path / "render.go"
    source.write_text(GO_RENDER)
    done = subprocess.run([shutil.which("go"), "run", str(source), template, json.dumps(data)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "GOCACHE": str(tmp_path / "go-cache")})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed: the template is not executed")
def test_go_renders_the_template_as_training_did(tmp_path):
    system = {"role": "system", "content": "你是一个助手。"}
    turns = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"},
             {"role": "user", "content": "数学是什么？\n请简短回答。"}]
    # Ollama fills .System from the system message and passes every message in .Messages
    rendered = go_render(tmp_path, CHATML_GO_TEMPLATE, {"System": system["content"], "Messages": [system, *turns]})
    assert rendered == chatml_text([system, *turns]) + "<|im_start|>assistant\n"
    rendered = go_render(tmp_path, CHATML_GO_TEMPLATE, {"Messages": turns[:1]})
    assert rendered == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    assert go_render(tmp_path, RAW_TEMPLATE, {"Prompt": "数学是"}) == "数学是"
