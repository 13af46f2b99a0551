"""Peer for the HTTP bench: a FastAPI + uvicorn replica of the seed's service
(/work/shared/seed/000_*.txt): POST /generate-concept and GET /image-status/{job_id},
an in-memory dict of jobs, a ThreadPoolExecutor(2), and time.sleep standing in
for Stable Diffusion. Run: python seed_service.py --port 8801 [--model-seconds 30]
"""

import argparse
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Optional

import uvicorn
from fastapi import BackgroundTasks, FastAPI, HTTPException
from pydantic import BaseModel

app = FastAPI()
MODEL_SECONDS = 30.0

# Job management for async image generation (as in the seed)
image_generation_jobs = {}
executor = ThreadPoolExecutor(max_workers=2)


class ImageGenerationJob:
    def __init__(self, job_id: str):
        self.job_id = job_id
        self.status = "pending"  # pending, processing, completed, failed
        self.created_at = datetime.now()
        self.image_url = None
        self.error_message = None


class ConceptRequest(BaseModel):
    room_type: Optional[str] = "living_room"
    style: Optional[str] = None
    improvement_suggestions: Optional[str] = None
    prompt: Optional[str] = None


def run_model(job_id: str) -> None:
    job = image_generation_jobs[job_id]
    job.status = "processing"
    try:
        time.sleep(MODEL_SECONDS)  # Stable Diffusion would run here
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        job.image_url = f"/uploads/conceptual_images/conceptual_living_room_{stamp}.png"
        job.status = "completed"
    except Exception as e:  # the seed reports failures in the job
        job.status = "failed"
        job.error_message = str(e)


def generate_image_background(job_id: str, req: ConceptRequest) -> None:
    executor.submit(run_model, job_id)


@app.post("/generate-concept")
async def start_conceptual_image_generation(background_tasks: BackgroundTasks, req: ConceptRequest):
    job_id = str(uuid.uuid4())
    job = ImageGenerationJob(job_id)
    image_generation_jobs[job_id] = job
    background_tasks.add_task(generate_image_background, job_id, req)
    return {
        "success": True,
        "job_id": job_id,
        "status": "pending",
        "estimated_completion_time": "30-60 seconds",
    }


@app.get("/image-status/{job_id}")
async def get_image_generation_status(job_id: str):
    job = image_generation_jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail="job not found")
    if job.status == "completed":
        return {
            "success": True,
            "job_id": job_id,
            "status": "completed",
            "image_url": job.image_url,
            "disclaimer": "Conceptual Visualization / Inspirational Preview",
            "polling_instructions": {"continue_polling": False, "final_status": "completed"},
        }
    if job.status == "failed":
        return {
            "success": False,
            "job_id": job_id,
            "status": "failed",
            "error_message": job.error_message,
            "polling_instructions": {"continue_polling": False, "final_status": "failed"},
        }
    elapsed = (datetime.now() - job.created_at).total_seconds()
    return {
        "success": True,
        "job_id": job_id,
        "status": job.status,
        "progress": {
            "estimated_remaining_seconds": max(0, int(MODEL_SECONDS - elapsed)),
            "progress_message": "Generating real AI image with Stable Diffusion...",
        },
        "polling_instructions": {"continue_polling": True, "poll_interval_seconds": 3},
    }


def main() -> None:
    global MODEL_SECONDS
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8801)
    ap.add_argument("--model-seconds", type=float, default=30.0)
    ap.add_argument("--access-log", action="store_true",
                    help="uvicorn's access log (the seed ran with it; off by default, "
                         "which only favours the replica)")
    a = ap.parse_args()
    MODEL_SECONDS = a.model_seconds
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", access_log=a.access_log)


if __name__ == "__main__":
    main()
