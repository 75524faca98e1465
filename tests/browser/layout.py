"""Adds a diagram layout (BPMN DI) to a BPMN file that has none, so bpmn-js can draw it.

The sample process used by the engine tests has no layout; the browser tests draw it.
Columns follow the longest path from the start event, rows follow the lanes.
"""

from __future__ import annotations

from collections import defaultdict

from lxml import etree

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
BPMNDI = "http://www.omg.org/spec/BPMN/20100524/DI"
DC = "http://www.omg.org/spec/DD/20100524/DC"
DI = "http://www.omg.org/spec/DD/20100524/DI"
NODE_TAGS = {"startEvent", "endEvent", "task", "userTask", "serviceTask", "scriptTask", "businessRuleTask",
             "manualTask", "sendTask", "receiveTask", "exclusiveGateway", "parallelGateway", "inclusiveGateway",
             "eventBasedGateway", "intermediateCatchEvent", "intermediateThrowEvent", "callActivity", "subProcess"}
LANE_H, COL_W, X0, LANE_X = 180, 150, 210, 130


def _size(tag: str) -> tuple[int, int]:
    if tag.endswith("Event"):
        return 36, 36
    if tag.endswith("Gateway"):
        return 50, 50
    return 100, 80


def add_layout(xml: bytes) -> bytes:
    root = etree.fromstring(xml)
    if root.find(f"{{{BPMNDI}}}BPMNDiagram") is not None:
        return xml
    process = root.find(f"{{{BPMN}}}process")
    nodes = {el.get("id"): etree.QName(el).localname for el in process if etree.QName(el).localname in NODE_TAGS}
    flows = [(f.get("id"), f.get("sourceRef"), f.get("targetRef")) for f in process.iter(f"{{{BPMN}}}sequenceFlow")]
    outgoing: dict[str, list[str]] = defaultdict(list)
    incoming: dict[str, int] = defaultdict(int)
    for _fid, s, t in flows:
        outgoing[s].append(t)
        incoming[t] += 1
    column = {n: 0 for n in nodes if incoming[n] == 0}
    queue = list(column)
    while queue:  # longest path, each node visited a bounded number of times (diagrams here are acyclic)
        n = queue.pop(0)
        for t in outgoing[n]:
            if column.get(t, -1) < column[n] + 1 and column[n] + 1 <= len(nodes):
                column[t] = column[n] + 1
                queue.append(t)
    lanes = list(process.iter(f"{{{BPMN}}}lane"))
    lane_of = {ref.text: i for i, lane in enumerate(lanes) for ref in lane.iter(f"{{{BPMN}}}flowNodeRef")}
    used: dict[tuple[int, int], int] = defaultdict(int)
    bounds: dict[str, tuple[int, int, int, int]] = {}
    for n, tag in nodes.items():
        col, lane = column.get(n, 0), lane_of.get(n, 0)
        w, h = _size(tag)
        slot = used[(col, lane)]
        used[(col, lane)] += 1
        cx, cy = X0 + col * COL_W, lane * LANE_H + LANE_H // 2 + slot * 90
        bounds[n] = (cx - w // 2, cy - h // 2, w, h)
    width = X0 + (max(column.values(), default=0) + 1) * COL_W
    diagram = etree.SubElement(root, f"{{{BPMNDI}}}BPMNDiagram", id="layout_diagram")
    collaboration = root.find(f"{{{BPMN}}}collaboration")
    plane = etree.SubElement(diagram, f"{{{BPMNDI}}}BPMNPlane", id="layout_plane",
                             bpmnElement=collaboration.get("id") if collaboration is not None else process.get("id"))

    def shape(element: str, x: int, y: int, w: int, h: int, horizontal: bool = False) -> None:
        s = etree.SubElement(plane, f"{{{BPMNDI}}}BPMNShape", id=f"{element}_di", bpmnElement=element)
        if horizontal:
            s.set("isHorizontal", "true")
        etree.SubElement(s, f"{{{DC}}}Bounds", x=str(x), y=str(y), width=str(w), height=str(h))

    if collaboration is not None:
        for participant in collaboration.iter(f"{{{BPMN}}}participant"):
            shape(participant.get("id"), LANE_X - 30, 0, width - LANE_X + 30, max(1, len(lanes)) * LANE_H, True)
        for i, lane in enumerate(lanes):
            shape(lane.get("id"), LANE_X, i * LANE_H, width - LANE_X, LANE_H, True)
    for n, (x, y, w, h) in bounds.items():
        shape(n, x, y, w, h)
    for fid, s, t in flows:
        sx, sy, sw, sh = bounds[s]
        tx, ty, tw, th = bounds[t]
        edge = etree.SubElement(plane, f"{{{BPMNDI}}}BPMNEdge", id=f"{fid}_di", bpmnElement=fid)
        start, end = (sx + sw, sy + sh // 2), (tx, ty + th // 2)
        points = [start, end] if start[1] == end[1] else [start, ((start[0] + end[0]) // 2, start[1]),
                                                          ((start[0] + end[0]) // 2, end[1]), end]
        for px, py in points:
            etree.SubElement(edge, f"{{{DI}}}waypoint", x=str(px), y=str(py))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
