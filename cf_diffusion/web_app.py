"""The gradio page of `cf-diffusion serve`: an Edit tab (pick a model and an example or upload an image, set
interventions, see the edit, the mask, the causal graph and the identification table) and a Generate tab. The logic
lives in `cf_diffusion.web`; this module only lays out the page and wires it to those functions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gradio as gr

from cf_diffusion import web
from cf_diffusion.editing_defaults import DEFAULT_NUM_INFERENCE_STEPS
from cf_diffusion.identification import IDENTIFICATION_COLUMNS

CSS = (
    "#input-image img, #output-image img, #mask-image img { width: 100%; height: 100%; object-fit: contain; "
    "image-rendering: pixelated; } #generated img { image-rendering: pixelated; }"
)
"""Small model images are shown enlarged, pixel for pixel."""
MAX_UPLOAD = "20mb"
"""Largest upload the page accepts."""
THEME_FONTS = {"font": ["ui-sans-serif", "system-ui", "sans-serif"], "font_mono": ["ui-monospace", "monospace"]}
"""System fonts, so the page needs no font server (it works offline)."""


def shown_in_page(handler: Callable) -> Callable:
    """`handler` with its ValueErrors shown as one message in the page (`gr.Error`) instead of a stack trace."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except ValueError as error:
            raise gr.Error(str(error), print_exception=False) from None

    return wrapper


def _example_labels(model: str) -> list[str]:
    schema = web.pipeline(model).schema
    return [f"example {i}: {schema.format_row(e['factors'])}" for i, e in enumerate(web.examples(model))]


def _slot_settings(model: str, factual: dict[str, Any], num_slots: int) -> list[dict[str, Any]]:
    """Settings (constructor or `gr.update` keywords) of the control slots, a dropdown, a "do" box and a slider per
    slot, for the model's factors: dropdowns at `KEEP`, sliders at the factual value, unused slots hidden."""
    controls = web.factor_controls(web.pipeline(model).schema)
    settings = []
    for slot in range(num_slots):
        control = controls[slot] if slot < len(controls) else None
        if control is None:
            settings += [{"visible": False}] * 3
        elif control.is_slider:
            settings += [
                {"visible": False, "choices": [web.KEEP], "value": web.KEEP},
                {"visible": True, "label": f"do({control.name})", "value": False},
                {
                    "visible": True,
                    "label": control.name,
                    "minimum": control.low,
                    "maximum": control.high,
                    "value": float(factual[control.name]),
                },
            ]
        else:
            choices = [web.KEEP, *control.levels]
            settings += [
                {"visible": True, "label": f"do({control.name})", "choices": choices, "value": web.KEEP},
                {"visible": False, "value": False},
                {"visible": False},
            ]
    return settings


def _show_image(model: str, image, num_slots: int) -> list:
    """[image state, input image, factual text, *slot updates] for a newly chosen input image."""
    pipe = web.pipeline(model)
    factual = web.read_factors(pipe, image)
    updates = [gr.update(**settings) for settings in _slot_settings(model, factual, num_slots)]
    return [image, image, pipe.schema.format_row(factual), *updates]


def build_app(model: str = "default") -> gr.Blocks:
    """The page, starting on `model` (a shipped model's name or a pipeline folder) and its first example."""
    model = web.model_choices(model)[0] if model == "default" else model
    choices = web.model_choices(model)
    num_slots = max(len(web.pipeline(name).schema) for name in choices)
    first = web.examples(model)[0]["image"]
    factual_factors = web.read_factors(web.pipeline(model), first)
    settings = _slot_settings(model, factual_factors, num_slots)

    with gr.Blocks(title="cf-diffusion", analytics_enabled=False) as app:
        gr.Markdown(
            "## cf-diffusion: counterfactual image editing\nWhat would this image look like had a factor been "
            "different? The causal model decides which other factors change with it."
        )
        model_box = gr.Dropdown(choices, value=model, label="Model")
        with gr.Tab("Edit"):
            image_state = gr.State(first)
            with gr.Row():
                with gr.Column(scale=2):
                    labels = _example_labels(model)
                    example = gr.Dropdown(labels, value=labels[0], label="Example image")
                    upload = gr.UploadButton("...or upload an image", file_types=["image"], elem_id="upload")
                    factual = gr.Textbox(
                        web.pipeline(model).schema.format_row(factual_factors),
                        label="Factual factors (read off the image by the predictor; editable)",
                    )
                    slots = []
                    with gr.Row():
                        for slot in range(num_slots):
                            with gr.Column(min_width=120):
                                level, do_box, value = settings[3 * slot : 3 * slot + 3]
                                slots += [
                                    gr.Dropdown(**{"choices": [web.KEEP], **level}, elem_id=f"slot-{slot}-level"),
                                    gr.Checkbox(**do_box, elem_id=f"slot-{slot}-do"),
                                    gr.Slider(**value, elem_id=f"slot-{slot}-value"),
                                ]
                    with gr.Row():
                        steps = gr.Slider(
                            1, 200, value=DEFAULT_NUM_INFERENCE_STEPS, step=1, label="Sampling steps", elem_id="steps"
                        )
                        seed = gr.Number(0, precision=0, label="Seed", min_width=80)
                    preserve = gr.Checkbox(
                        label="Keep the input's pixels outside the affected region and show the mask (always on "
                        "for images larger than the model's)"
                    )
                    edit = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Column(scale=3):
                    with gr.Row():
                        shown = gr.Image(
                            first, label="Input", format="png", height=220, interactive=False, elem_id="input-image"
                        )
                        output = gr.Image(
                            label="Edit", format="png", height=220, interactive=False, elem_id="output-image"
                        )
                        mask = gr.Image(
                            label="Mask: white may change",
                            format="png",
                            height=220,
                            visible=False,
                            interactive=False,
                            elem_id="mask-image",
                        )
                    graph = gr.Image(
                        web.draw_graph(web.pipeline(model).scm.graph, []),
                        label="Causal graph: intervened (orange), may change (yellow)",
                        format="png",
                        height=220,
                        interactive=False,
                    )
                    summary = gr.Markdown()
                    table = gr.Dataframe(
                        headers=list(IDENTIFICATION_COLUMNS), label="What the data identify", interactive=False
                    )
        with gr.Tab("Generate"):
            with gr.Row():
                do = gr.Textbox(label="Interventions, e.g. size=large (empty: sample the observational distribution)")
                count = gr.Slider(1, 16, value=8, step=1, label="Images")
                generate_steps = gr.Slider(
                    1, 200, value=DEFAULT_NUM_INFERENCE_STEPS, step=1, label="Sampling steps", elem_id="generate-steps"
                )
                generate_seed = gr.Number(0, precision=0, label="Seed")
            generate = gr.Button("Generate", variant="primary")
            gallery = gr.Gallery(label="Samples: factors drawn from the causal model", columns=8, elem_id="generated")
        image_outputs = [image_state, shown, factual, *slots]

        @shown_in_page
        def on_model(name: str) -> list:
            labels = _example_labels(name)
            graph_image = web.draw_graph(web.pipeline(name).scm.graph, [])
            cleared = [None, gr.update(visible=False, value=None), graph_image, None, ""]
            first_image = web.examples(name)[0]["image"]
            return [gr.update(choices=labels, value=labels[0]), *_show_image(name, first_image, num_slots), *cleared]

        @shown_in_page
        def on_example(name: str, label: str) -> list:
            return _show_image(name, web.examples(name)[_example_labels(name).index(label)]["image"], num_slots)

        @shown_in_page
        def on_upload(name: str, path: str | None) -> list:
            if path is None:
                raise ValueError("No file was uploaded.")
            pipe = web.pipeline(name)
            return _show_image(name, web.open_upload(path, pipe.image_channels), num_slots)

        @shown_in_page
        def on_edit(name, image, text, num_steps, seed_value, keep, *values, progress=gr.Progress()) -> list:  # noqa: B008 (gradio injects it)
            pipe = web.pipeline(name)
            controls = web.factor_controls(pipe.schema)
            choices = [
                (values[3 * i + 1], values[3 * i + 2]) if control.is_slider else values[3 * i]
                for i, control in enumerate(controls)
            ]
            factual_factors = web.parse_factors(pipe.schema, text)
            view = web.run_edit(
                pipe,
                image,
                factual_factors,
                web.interventions(controls, choices),
                num_steps,
                seed_value,
                keep,
                progress,
            )
            return [
                view.image,
                gr.update(value=view.mask, visible=view.mask is not None),
                view.graph,
                [list(row) for row in view.rows],
                view.summary,
            ]

        @shown_in_page
        def on_generate(name, text, num_images, num_steps, seed_value, progress=gr.Progress()) -> list:  # noqa: B008 (gradio injects it)
            return web.run_generate(web.pipeline(name), text, num_images, num_steps, seed_value, progress)

        edit_outputs = [output, mask, graph, table, summary]
        model_box.input(on_model, model_box, [example, *image_outputs, *edit_outputs])
        example.input(on_example, [model_box, example], image_outputs)
        upload.upload(on_upload, [model_box, upload], image_outputs)
        edit.click(on_edit, [model_box, image_state, factual, steps, seed, preserve, *slots], edit_outputs)
        generate.click(on_generate, [model_box, do, count, generate_steps, generate_seed], gallery)
    return app


def serve(model: str = "default", host: str = "127.0.0.1", port: int = 7860) -> None:
    """Serves the page at http://HOST:PORT until interrupted (one edit at a time: the pipeline is shared)."""
    app = build_app(model)
    app.queue(default_concurrency_limit=1)
    app.launch(
        server_name=host,
        server_port=port,
        ssr_mode=False,
        theme=gr.themes.Default(**THEME_FONTS),
        css=CSS,
        footer_links=[],
        max_file_size=MAX_UPLOAD,
    )
