"""Collections: what is indexed, create a collection, add files or a folder, watch ingestion live, read errors."""

from __future__ import annotations

import time

import streamlit as st

from ui.client import ClientError
from ui.common import client

S = st.session_state
NEW = "New collection…"
IMAGE_TYPES = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"]
FINISHED = ("done", "failed")


def overview(colls: list[dict]) -> None:
    if not colls:
        st.info("No collection yet. Create one below, then upload images or point at a folder on this machine.")
        return
    rows = [{"collection": c["name"], "indexed": c["assets"].get("indexed", 0),
             "duplicates": c["assets"].get("duplicate", 0), "failed": c["assets"].get("failed", 0),
             "pending": c["assets"].get("pending", 0), "folder": c.get("root")} for c in colls]
    st.dataframe(rows, hide_index=True, width="stretch")


def target_collection(colls: list[dict]) -> str | None:
    names = [c["name"] for c in colls]
    if S.get("select_target") in names:  # a job just created this collection: select it
        S["target"] = S.pop("select_target")
    choice = st.selectbox("Collection", names + [NEW], key="target", index=0 if names else len(names))
    if choice != NEW:
        return choice
    left, right = st.columns([3, 1])
    name = left.text_input("Name of the new collection", key="new_name", placeholder="spring-campaign",
                           help="letters, digits, '.', '_' or '-'")
    right.write("")
    if right.button("Create empty", key="create_button", disabled=not name.strip()):
        try:
            client().create_collection(name.strip())
            st.success(f"Collection “{name.strip()}” created. Add images to it below.")
        except ClientError as e:
            st.error(str(e))
    return name.strip() or None


def start(collection: str | None, how: str, ocr: bool) -> None:
    if not collection:
        st.error("Name the new collection first.")
        return
    try:
        if how == "upload":
            files = S.get("uploads") or []
            if not files:
                st.error("Choose one or more images to upload first.")
                return
            job_id = client().upload(collection, [(f.name, f.getvalue()) for f in files], ocr=ocr)
        else:
            paths = [p.strip() for p in S.get("folder", "").splitlines() if p.strip()]
            if not paths:
                st.error("Type the path of a folder (or image files, or a PAIRS.jsonl) on the server first.")
                return
            job_id = client().ingest_paths(collection, paths, ocr=ocr)
    except ClientError as e:
        st.error(f"Nothing was ingested: {e}")
        return
    S["watch_job"], S["select_target"] = job_id, collection


def job_line(job: dict) -> str:
    return (f"indexed {job['indexed']}, duplicates {job['duplicates']}, unchanged {job['skipped']}, "
            f"failed {job['failed']}, removed {job.get('removed', 0)} (of {job['seen']} files seen)")


def watch(job_id: int) -> None:
    """Follow the job until it ends: a progress bar inside a status box, then its summary and failed files."""
    try:
        job = client().job(job_id)
        with st.status(f"Job {job_id} ({job['collection']}): {job['status']}", expanded=True) as box:
            bar = st.progress(0.0, text="waiting for the worker...")
            while job["status"] not in FINISHED:
                total = job.get("queued") or 0
                if total:
                    bar.progress(min(job["done"] / total, 1.0), text=f"{job['done']} of {total} files")
                box.update(label=f"Job {job_id} ({job['collection']}): {job['status']}")
                time.sleep(0.4)
                job = client().job(job_id)
            bar.progress(1.0, text=job_line(job))
            ok = job["status"] == "done"
            box.update(label=f"Job {job_id} ({job['collection']}): {job['status']} in {job['seconds']:.1f} s",
                       state="complete" if ok else "error")
    except ClientError as e:
        st.error(f"Cannot follow job {job_id}: {e}")
        return
    if S.get("refreshed") != job_id:  # once: redraw the page so the overview counts the new files
        S["refreshed"] = job_id
        st.rerun()
    (st.success if job["status"] == "done" and not job["failed"] else st.warning)(
        f"Job {job_id} {job['status']}: {job_line(job)}.")
    if job.get("error"):
        st.error(f"The job stopped: {job['error']}")
    errors(job.get("errors") or [], job["failed"])


def errors(rows: list[dict], failed: int) -> None:
    if not rows:
        return
    st.markdown(f"**Files that could not be indexed ({failed})**")
    st.dataframe([{"file": r["path"], "reason": r["error"]} for r in rows], hide_index=True, width="stretch")
    if failed > len(rows):
        st.caption(f"The first {len(rows)} are shown; `omnibridge status` lists the rest.")


st.title("Collections")
try:
    colls = client().collections()
except ClientError as e:
    st.error(f"Cannot list the collections: {e}")
    st.stop()
overview(colls)

st.subheader("Add images")
collection = target_collection(colls)
upload_tab, folder_tab = st.tabs(["Upload files", "Ingest a folder"])
with upload_tab:
    st.file_uploader("Images", type=IMAGE_TYPES, accept_multiple_files=True, key="uploads")
    if st.button("Upload and index", type="primary", key="upload_button"):
        start(collection, "upload", S.get("ocr", False))
with folder_tab:
    st.text_area("Folders or files on the server, one per line (folders are read recursively; a PAIRS.jsonl adds "
                 "captions)", key="folder", placeholder="/data/photos")
    if st.button("Index folder", type="primary", key="folder_button"):
        start(collection, "folder", S.get("ocr", False))
st.checkbox("Read text in images (OCR, needs tesseract)", key="ocr")

if S.get("watch_job"):
    st.subheader("Ingestion")
    watch(S["watch_job"])

try:
    recent = client().recent_jobs(n=5)
except ClientError:
    recent = []
if recent:
    with st.expander("Recent jobs"):
        for job in recent:
            st.markdown(f"- job {job['id']} · **{job['collection']}** · {job['status']} · {job['source']}: "
                        f"{job_line(job)}" + (f" — {job['error']}" if job.get("error") else ""))
