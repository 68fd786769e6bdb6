"""Vision page: upload images; detections drawn with labels and scores above a threshold,
segmentation overlays with an opacity slider, classification probabilities; results
downloadable (COCO JSON for detections, PNG label masks for segmentation).

The base is built once per (model, classes, weights) with ``st.cache_resource``; the
adapters of that base are loaded onto it once and switched (:class:`AdapterSlots`). Other
adapters of the same base can be compared on the same images in one mixed-adapter pass.
"""

from __future__ import annotations

import streamlit as st

from scalpel.apps.common import MAX_UPLOAD_MB, cached, friendly_errors, pick_run, too_large
from scalpel.apps.runs import AdapterSlots, RunInfo
from scalpel.apps import vision_infer as vi

MAX_IMAGES = 16


@cached
def _base(key: tuple, _extra: dict) -> AdapterSlots:
    return AdapterSlots(vi.build_base(_extra))


def vision_model(run: RunInfo):
    return _base(vi.base_key(run.extra), run.extra).activate(run.adapter_dir)


def main() -> None:
    st.header("Vision")
    run = pick_run(vi.VISION_TASKS, "vision.detection", key="run_vision")
    if run is None:
        return
    task, names = run.extra.get("task"), list(run.extra.get("class_names", []))
    st.caption(f"{task} - classes: {', '.join(names)}")
    uploads = st.file_uploader(f"Images (PNG/JPEG, at most {MAX_IMAGES}, {MAX_UPLOAD_MB} MB in all)", accept_multiple_files=True,
                               key="vision_images")
    if st.button("Try target-domain examples", key="vision_try",
                 help="Scenes of the demo's shifted target domain (scalpel.vision.synthetic), none seen in training"):
        st.session_state["vision_examples"] = True
    if task == "detection":
        threshold = st.slider("Score threshold", 0.0, 1.0, 0.3, 0.01, key="vision_threshold")
    elif task == "segmentation":
        opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="vision_opacity")
    others = compare_choices(run)
    compare_with = st.multiselect("Compare with other adapters of this base (one mixed-adapter pass)", list(others),
                                  key="vision_compare") if others else []
    if not uploads and not st.session_state.get("vision_examples"):
        st.info("Upload one or more images, or try the examples.")
        return
    if uploads and (too_large(uploads) or len(uploads) > MAX_IMAGES):
        if len(uploads) > MAX_IMAGES:
            st.error(f"{len(uploads)} images uploaded; the page handles at most {MAX_IMAGES} at a time.")
        return
    with friendly_errors("Cannot run the model"):
        model = None
        detections, masks, shown = [], [], []
        for name, image in _images(uploads, run):
            shown.append((name, image))
            if model is None:
                with st.spinner("Loading the model..."):
                    model = vision_model(run)
            st.subheader(name)
            if task == "detection":
                prediction = vi.detect(model, image)
                detections.append((name, image, prediction))
                rows = vi.detections_table(prediction, names, threshold)
                st.image(vi.draw(image, prediction, names, threshold), caption=f"{len(rows)} detection(s) >= {threshold:.2f}")
                if rows:
                    st.dataframe(rows, hide_index=True)
            elif task == "segmentation":
                mask = vi.segment(model, image, int(run.extra.get("image_size") or 256))
                masks.append((name, mask))
                st.image(vi.blend(image, mask, int(run.extra["num_classes"]), opacity), caption="segmentation overlay")
                counts = {names[k] if k < len(names) else str(k): int((mask == k).sum()) for k in range(int(run.extra["num_classes"]))}
                st.dataframe([{"class": k, "pixels": v} for k, v in counts.items() if v], hide_index=True)
            else:
                probs = vi.classify(model, image, int(run.extra.get("image_size") or 224), names)
                st.image(image)
                st.dataframe(sorted(({"class": k, "probability": round(v, 4)} for k, v in probs.items()),
                                    key=lambda r: -r["probability"]), hide_index=True)
        if compare_with and shown:
            st.subheader("Adapters compared")
            st.dataframe(compare_rows([run, *(others[n] for n in compare_with)], shown, threshold if task == "detection" else 0.0),
                         hide_index=True, key="vision_comparison")
        if detections:
            st.download_button("Download detections (COCO JSON)", vi.coco_json(detections, names, threshold),
                               file_name="detections.json", mime="application/json", key="vision_coco")
        if masks:
            st.download_button("Download masks (PNG, zipped)", vi.masks_zip(masks), file_name="masks.zip",
                               mime="application/zip", key="vision_masks")


def compare_choices(run: RunInfo) -> dict[str, RunInfo]:
    """The other runs of the same base (model, classes, weights) and task as ``run``, by name."""
    from scalpel.apps.runs import find_runs

    runs, _ = find_runs(st.session_state.get("runs_dir") or ".", vi.VISION_TASKS)
    same = lambda r: vi.base_key(r.extra) == vi.base_key(run.extra) and r.extra.get("task") == run.extra.get("task")  # noqa: E731
    return {r.name: r for r in runs if r.name != run.name and same(r)}


def compare_rows(runs: list[RunInfo], images: list, threshold: float) -> list[dict]:
    """One row per image: each adapter's answer, from one mixed-adapter pass per image
    (:func:`scalpel.vision.predict.compare_images`; detectors run one adapter at a time)."""
    from scalpel.vision.data.transforms import to_image
    from scalpel.vision.predict import compare_images

    with st.spinner(f"Comparing {len(runs)} adapters..."):
        tensors = [(name, to_image(image)) for name, image in images]
        per_adapter = compare_images([r.adapter_dir for r in runs], tensors, {"threshold": threshold})
    rows = []
    for i, (name, _) in enumerate(images):
        row = {"image": name}
        for run, results in zip(runs, per_adapter):
            result = results[i]
            if "objects" in result:
                row[f"{run.name}: objects"] = len(result["objects"])
            elif "pixels" in result:
                row[f"{run.name}: pixels"] = ", ".join(f"{k} {v}" for k, v in result["pixels"].items())
            else:
                row[f"{run.name}: label"], row[f"{run.name}: score"] = result["label"], result["score"]
        rows.append(row)
    return rows


def _images(uploads, run: RunInfo):
    """(name, RGB image) of the uploads, else of the one-click examples; unreadable uploads are reported."""
    if not uploads:
        yield from _examples(run.extra.get("image_size"), run)
        return
    for upload in uploads:
        try:
            yield upload.name, vi.decode_image(upload.name, upload.getvalue())
        except vi.DataError as err:
            st.error(str(err))


@st.cache_data(show_spinner=False, max_entries=4)
def _examples(size, _run: RunInfo):
    from scalpel.apps.examples import vision_examples

    return vision_examples(_run)


if __name__ == "__main__":
    st.set_page_config(page_title="Scalpel: vision", layout="wide")
    main()
