"""The Gradio page of ``leafseg serve`` and its server. The only module of leafseg that imports Gradio.

    page = build_page(shelf, scenes)          # shelf: ModelShelf, scenes: image files to offer
    server = start_server(page, "127.0.0.1", 7860, allowed=[scenes_folder])
    server.url                                # http://127.0.0.1:7860/
    server.close()

The page: pick a model, upload an image (or pick a synthetic scene), type class names where the model
is open-vocabulary, press Segment; it shows the overlay with its legend and each class's share of the
image. Whatever the input, a handler answers with a message in the page, never with a dead server.

Nothing leaves the machine: Gradio's usage analytics, its update check and Hugging Face telemetry are
switched off before Gradio is imported, there is no share link, no server-side rendering (which would
need Node) and no MCP server, and the default theme's fonts are served locally.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from leafseg.errors import ConfigError, UserError
from leafseg.eval.segment import DEFAULT_ALPHA
from leafseg.serve.handlers import DEFAULT_REGIONS, MAX_SIDE, segment_for_page, shares_html
from leafseg.serve.models import ModelShelf, PageModel

log = logging.getLogger("leafseg.serve")
MISTAKES = (UserError, FileNotFoundError)  # what a person can fix: shown as a message, like the command line does

OFFLINE_ENV = {  # set before Gradio is imported
    "GRADIO_ANALYTICS_ENABLED": "False",  # no usage analytics, no version check
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "GRADIO_SSR_MODE": "False",
    "GRADIO_MCP_SERVER": "False",
}
CSS = """
.leafseg-shares {border-collapse: collapse; width: 100%}
.leafseg-shares td, .leafseg-shares th {padding: 3px 8px; text-align: left; border-bottom: 1px solid #eee}
.leafseg-swatch {display: inline-block; width: 14px; height: 14px; border: 1px solid #888; vertical-align: middle}
.leafseg-bar {width: 40%} .leafseg-bar div {height: 10px; border-radius: 2px}
.leafseg-absent td {color: #777; font-size: 90%}
"""


def import_gradio():
    """Gradio, imported with everything that would reach outside the machine switched off
    (:data:`OFFLINE_ENV`). Raises ConfigError saying how to install it when it is missing."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    try:
        import gradio
    except ImportError as err:
        raise ConfigError(f"leafseg serve needs Gradio ({err}); install it with: pip install 'leafseg[serve]'") \
            from None
    return gradio


def class_box(model: PageModel) -> dict:
    """What the class-names box shows for ``model``: its own classes, read-only (fixed), an editable
    box (open), or nothing (k-means regions). Keys: value (None keeps the typed text), interactive,
    visible, label."""
    if model.vocabulary == "fixed":
        return {"value": ", ".join(model.classes), "interactive": False, "visible": True,
                "label": "classes (fixed by this model)"}
    return {"value": None, "interactive": True, "visible": model.vocabulary == "open",
            "label": "class names, comma-separated"}


def _model_widgets(gr, model: PageModel) -> tuple:
    """Updates of (class-names box, regions slider, about text) when ``model`` is picked."""
    box = class_box(model)
    if box["value"] is None:
        box.pop("value")
    return gr.update(**box), gr.update(visible=model.vocabulary == "regions"), f"*{model.about}*"


def _answer(shelf: ModelShelf, label, image, class_text, regions, alpha, max_side) -> tuple:
    """(picture or None, table HTML, message) for the page; errors become messages."""
    try:
        model = shelf.get(label)
        answer = segment_for_page(model, image, class_text, regions=int(regions), alpha=float(alpha),
                                  max_side=max_side, device=shelf.device)
    except MISTAKES as err:
        return None, "", f"**Cannot segment:** {err}"
    except Exception as err:  # noqa: BLE001 - a fault of leafseg: keep serving, keep the traceback
        log.exception("segmenting failed")
        return None, "", f"**Internal error** ({type(err).__name__}: {err}); the traceback is in the terminal."
    return answer.picture, shares_html(answer.table), answer.message


def _load(gr, shelf: ModelShelf, path: str | None) -> tuple:
    """Load a typed checkpoint path: (model choices update, message)."""
    if not (path or "").strip():
        return gr.update(), "**Cannot load:** type the path of a checkpoint a recipe exported."
    try:
        model = shelf.add_checkpoint(path.strip())
    except MISTAKES as err:
        return gr.update(), f"**Cannot load:** {err}"
    except Exception as err:  # noqa: BLE001
        log.exception("loading %s failed", path)
        return gr.update(), f"**Internal error** ({type(err).__name__}: {err}); the traceback is in the terminal."
    return gr.update(choices=shelf.labels(), value=model.label), f"Loaded {model.label}."


def build_page(shelf: ModelShelf, scenes: list[Path], *, classes: str = "", max_side: int | None = MAX_SIDE):
    """The page (a ``gradio.Blocks``) over the models of ``shelf`` and the images ``scenes``; ``classes``
    prefills the class-names box. Every widget has an ``elem_id`` (model, about, model-path, load, image,
    scenes, classes, regions, alpha, segment, status, overlay, shares)."""
    gr = import_gradio()
    labels = shelf.labels()
    if not labels:
        raise ConfigError("the page needs at least one model")
    first = shelf.get(labels[0])
    box = class_box(first)
    with gr.Blocks(title="leafseg", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown("## leafseg: segment an image")
        with gr.Row():
            with gr.Column():
                model = gr.Radio(labels, value=first.label, label="model", elem_id="model")
                about = gr.Markdown(f"*{first.about}*", elem_id="about")
                with gr.Accordion("load another checkpoint", open=False):
                    path = gr.Textbox(label="path of weights a recipe exported (final.pt, *.safetensors)",
                                      elem_id="model-path")
                    load = gr.Button("Load", elem_id="load")
                image = gr.Image(label="image", type="numpy", image_mode="RGB", format="png",
                                 sources=["upload", "clipboard"], elem_id="image")
                if scenes:
                    gr.Examples([[str(p)] for p in scenes], inputs=[image], label="or pick a synthetic scene",
                                elem_id="scenes", examples_per_page=len(scenes))
                names = gr.Textbox(value=box["value"] or classes, interactive=box["interactive"],
                                   visible=box["visible"], label=box["label"], elem_id="classes")
                regions = gr.Slider(2, 16, value=DEFAULT_REGIONS, step=1, label="regions",
                                    visible=first.vocabulary == "regions", elem_id="regions")
                alpha = gr.Slider(0.0, 1.0, value=DEFAULT_ALPHA, step=0.05, label="opacity of the class colours",
                                  elem_id="alpha")
                go = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                status = gr.Markdown("Pick a model and an image, then press Segment.", elem_id="status")
                overlay = gr.Image(label="classes over the image", type="numpy", format="png", interactive=False,
                                   buttons=["download", "fullscreen"], elem_id="overlay")
                shares = gr.HTML(elem_id="shares")
        model.change(lambda label: _model_widgets(gr, shelf.get(label)), [model], [names, regions, about])
        load.click(lambda text: _load(gr, shelf, text), [path], [model, status])
        go.click(lambda *args: _answer(shelf, *args, max_side), [model, image, names, regions, alpha],
                 [overlay, shares, status], concurrency_limit=1)  # one image at a time: methods hold state
    return page


@dataclass
class Server:
    """A started page: its ``url``; ``close()`` stops the server."""

    page: object
    url: str

    def close(self) -> None:
        self.page.close()


def start_server(page, host: str = "127.0.0.1", port: int = 7860, allowed: list[Path] = ()) -> Server:
    """Serve ``page`` on ``host``:``port`` in background threads (returns at once). ``allowed``: folders
    whose files the page may serve (the scenes)."""
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, share=False,
                            inbrowser=False, ssr_mode=False, mcp_server=False, enable_monitoring=False,
                            run_history=False, footer_links=[], allowed_paths=[str(p) for p in allowed],
                            css=CSS)
    return Server(page, url)
