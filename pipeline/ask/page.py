"""A local page for asking a trained explainer (`python -m pipeline.ask serve RUN`; Gradio, the `page` extra): type a
prompt and a counterfactual subject, see the act_patch answers as a heat map of token types x layer windows, the
explainer's claim beside the target's patched next token in each cell and every answer in a table below."""

from __future__ import annotations

import html

import pandas as pd

from pipeline.explainer.prompts import answer_content

AGREE, DISAGREE = "#2e7d32", "#c62828"


def heatmap_html(table: pd.DataFrame) -> str:
    """The answers of one ask as an HTML grid: a row per token type, a column per layer window; each cell green where
    the explainer agrees with the truth and red where not, holding its claim and the truth (hover: the whole answer)."""
    windows = list(dict.fromkeys(f"{w[0]}-{w[-1]}" for w in table["layer"]))
    types = list(dict.fromkeys(table["token_type"]))
    cells = {(row.token_type, f"{row.layer[0]}-{row.layer[-1]}"): row for row in table.itertuples()}
    head = "".join(f"<th>layers {html.escape(w)}</th>" for w in windows)
    body = []
    for token_type in types:
        row_html = [f"<th>{html.escape(token_type)}</th>"]
        for window in windows:
            row = cells.get((token_type, window))
            if row is None:
                row_html.append("<td></td>")
                continue
            said = answer_content(row.answer)
            content = f" {said!r}" if said is not None else ""
            claim = (f"changes to{content}" if row.said_changed else
                     "unchanged" if row.said_changed is False else "no verdict")
            truth = f"{row.clean_token!r} → {row.patched_token!r}" if row.changed else f"{row.clean_token!r} stays"
            row_html.append(
                f'<td class="cell" data-agrees="{str(bool(row.agrees)).lower()}" title="{html.escape(row.answer)}" '
                f'style="background:{AGREE if row.agrees else DISAGREE};color:white;padding:6px">'
                f"<b>says:</b> {html.escape(claim)}<br><b>truth:</b> {html.escape(truth)}</td>")
        body.append(f"<tr>{''.join(row_html)}</tr>")
    agree = int(table["agrees"].sum())
    return (f'<p id="agreement">{agree} of {len(table)} answers agree with the target\'s patched next token</p>'
            f'<table id="heatmap"><tr><th></th>{head}</tr>{"".join(body)}</table>')


def exemplars_html(asked: dict) -> str:
    """A latent's ask as HTML: the explainer's description beside the reference and the simulator's scores, then each
    top exemplar with every token shaded by its activation and the firing token outlined."""
    simulator = asked.get("simulator") or {}
    scores = ""
    if simulator.get("enabled"):
        scores = "".join(f'<li id="simulator-{name}">simulator |r| of the {name}: {simulator[name]["top"]:.3f}</li>'
                         for name in ("description", "reference") if name in simulator)
    elif simulator:
        scores = f'<li id="simulator-off">simulator: not scored ({html.escape(simulator["why"])})</li>'
    reference = asked["reference"] if asked["reference"] else "none: the run did not describe this latent"
    rows = []
    for row in asked["exemplars"]:
        peak = max(max(row["activations"]), 1e-8)
        spans = []
        for index, (token, value) in enumerate(zip(row["tokens"], row["activations"])):
            shade = max(0.0, float(value)) / peak
            firing = ' class="firing" style="outline:2px solid #1565c0;' if index == row["firing_index"] else ' style="'
            spans.append(f'<span{firing}background:rgba(255,152,0,{shade:.2f})" title="{float(value):.3f}">'
                         f"{html.escape(token)}</span>")
        rows.append(f'<li class="exemplar">top {row["rank"]} ({row["activation"]:.2f}): '
                    f'<span style="white-space:pre-wrap">{"".join(spans)}</span></li>')
    return (f'<p><b>asked:</b> {html.escape(asked["question"])}</p>'
            f'<p><b>explainer:</b> <span id="description">{html.escape(asked["description"])}</span></p>'
            f'<p><b>reference:</b> <span id="reference">{html.escape(reference)}</span></p>'
            f"<ul>{scores}</ul><ol id=\"exemplars\">{''.join(rows)}</ol>")


def build(asker):
    """The page's Blocks for one trained explainer (a `pipeline.ask.Asker`): act_patch's grid, or a features
    latent's description and exemplars."""
    import gradio as gr

    if asker.task == "features":
        return build_features(asker)

    def ask(prompt: str, subject: str, counterfactual_subject: str):
        try:
            table = asker.act_patch(prompt, subject, counterfactual_subject)
        except ValueError as error:
            return f'<p id="error">{html.escape(str(error))}</p>', pd.DataFrame()
        shown = table.assign(layer=[f"{w[0]}-{w[-1]}" for w in table["layer"]])
        return heatmap_html(table), shown[["token_type", "layer", "answer", "clean_token", "patched_token", "changed",
                                           "agrees"]]

    with gr.Blocks(title=f"Ask {asker.run}") as page:
        gr.Markdown(f"## Ask the explainer `{asker.run}` (act_patch)\nThe state of the counterfactual prompt at each "
                    f"token type and layer window is patched into the prompt; the explainer says what changes, the "
                    f"target shows what does.")
        with gr.Row():
            prompt = gr.Textbox(label="prompt", elem_id="prompt",
                                value="The capital of France is the city of Paris. The capital of Japan is the city of")
            subject = gr.Textbox(label="subject", elem_id="subject", value="Japan")
            counterfactual = gr.Textbox(label="counterfactual subject", elem_id="counterfactual", value="Italy")
        button = gr.Button("Ask", elem_id="ask")
        grid = gr.HTML(elem_id="result")
        answers = gr.Dataframe(elem_id="answers", interactive=False)
        button.click(ask, inputs=[prompt, subject, counterfactual], outputs=[grid, answers])
    return page


def build_features(asker):
    import gradio as gr

    def ask(layer, feature):
        try:
            return exemplars_html(asker.features(int(layer), int(feature)))
        except (ValueError, OSError) as error:
            return f'<p id="error">{html.escape(str(error))}</p>'

    with gr.Blocks(title=f"Ask {asker.run}") as page:
        gr.Markdown(f"## Ask the explainer `{asker.run}` (features)\nThe decoder direction of an SAE latent is put at "
                    f"the placeholder; the explainer says what it encodes, beside the run's reference description and "
                    f"the latent's top exemplars (tokens shaded by activation, the firing token outlined).")
        with gr.Row():
            layer = gr.Number(label="layer", elem_id="layer", precision=0, value=None)
            feature = gr.Number(label="feature", elem_id="feature", precision=0, value=0)
        button = gr.Button("Ask", elem_id="ask")
        shown = gr.HTML(elem_id="result")
        button.click(ask, inputs=[layer, feature], outputs=[shown])
    return page


def serve(asker, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """The page on http://{host}:{port} (127.0.0.1 by default: only this machine reaches it)."""
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no call home
    page = build(asker)
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True)
    return page
