import asyncio, json
from tests.api.test_memcache_api import *  # noqa

async def test_diag(st):
    name = pool(st)
    print("slots before", (await st.http.get(f"/v1/pools/{name}/slots")).json())
    content = ok(await st.http.post("/api/scaler/terminate_all"))
    doc = await st.wait_status(content["ID"])
    print("scale-in events", json.dumps(doc["Events"], indent=0)[:3000])
    print("slots after", (await st.http.get(f"/v1/pools/{name}/slots")).json())
    await asyncio.sleep(5)
    view = await st.pool(name)
    print("view", view["nodes"], view["running"])
    print("slots later", (await st.http.get(f"/v1/pools/{name}/slots")).json())
    d = (await st.http.get(f"/v1/scale/status/{view['running']}")).json()
    print("top-up", json.dumps(d["Events"], indent=0)[:3000])
