"""The dashboard: one self-contained page (``scaleflow.api.dashboard_page``) and the
little JSON it needs beyond the public routes (``scaleflow.api.dashboard_data``).

None of it is in the OpenAPI schema: it is a page for people, not an API.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from scaleflow.api import dashboard_data
from scaleflow.api.dashboard_page import render
from scaleflow.api.deps import SettingsDep

router = APIRouter(tags=["dashboard"], include_in_schema=False)
router.include_router(dashboard_data.router)


@router.get("/", response_class=HTMLResponse)
@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(settings: SettingsDep) -> HTMLResponse:
    """The page; the pool it shows is picked in the page (``?pool=``), default pool first."""
    return HTMLResponse(render(settings))
