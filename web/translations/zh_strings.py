"""Simplified Chinese for the staff UI, kept as data; ``python -m web.translations.zh_strings``
merges it into ``zh/LC_MESSAGES/messages.po`` after ``make translations`` extracted new strings."""

from __future__ import annotations

ZH: dict[str, str] = {
    # forms
    "Yes": "是",
    "No": "否",
    "This field is required.": "此项必填。",
    "Not a valid %(format)s.": "不是有效的%(format)s。",
    "Enter a whole number.": "请输入整数。",
    "Enter a number.": "请输入数字。",
    "Choose yes or no.": "请选择是或否。",
    "Enter a list.": "请输入列表。",
    "Fill in this group of fields.": "请填写这一组字段。",
    "Enter text.": "请输入文字。",
    "Must be at least %(n)s.": "不能小于 %(n)s。",
    "Must be at most %(n)s.": "不能大于 %(n)s。",
    "Too short.": "内容太短。",
    "Add at least one entry.": "请至少添加一项。",
    "Too long.": "内容太长。",
    "Not in the expected format.": "格式不正确。",
    "Choose one of the options.": "请从选项中选择。",
    "Contains fields that this form does not accept.": "包含本表单不接受的字段。",
    "e-mail address": "电子邮件地址",
    "date": "日期",
    "date and time": "日期时间",
    "web address": "网址",
    "time": "时间",
    "Please correct the marked fields.": "请更正标出的字段。",
    "One entry per line.": "每行一项。",
    "required": "必填",
    "— choose —": "— 请选择 —",
    "Remove": "删除",
    "Remove row": "删除此行",
    "Add row": "添加一行",
    "This step has no form fields.": "此步骤没有需要填写的字段。",
    # sign in
    "Too many failed sign-ins. Try again later.": "登录失败次数过多，请稍后再试。",
    "Wrong username or password.": "用户名或密码错误。",
    "Sign in to Aftercare": "登录售后服务系统",
    "After-sales service: inquiries, complaints, repairs, installations and emergencies.":
        "售后服务：咨询、投诉、维修、安装与应急处理。",
    "Username": "用户名",
    "Password": "密码",
    "Sign out": "退出",
    "Sign in": "登录",
    # layout
    "Aftercare": "售后服务",
    "Skip to content": "跳到正文",
    "Main": "主导航",
    "Inbox": "待办",
    "New case": "新建工单",
    "Team board": "团队看板",
    "Cases": "工单浏览",
    "Processes": "流程",
    "Reports": "报表",
    "Language": "语言",
    # words
    "On time": "按时",
    "Warning": "预警",
    "Breached": "已超时",
    "No SLA": "无时限",
    "Paused": "已暂停",
    "Running": "处理中",
    "Waiting": "等待中",
    "Completed": "已完成",
    "Incident": "故障",
    "Cancelled": "已取消",
    "Unclaimed": "未认领",
    "Claimed": "已认领",
    "Case started": "工单创建",
    "Task opened": "任务开启",
    "Task claimed": "任务认领",
    "Task released": "任务退回",
    "Task assigned": "任务指派",
    "Draft saved": "草稿已存",
    "Task completed": "任务完成",
    "Automatic step done": "自动步骤完成",
    "Decision made": "规则决策",
    "Timer fired": "定时器触发",
    "Message received": "收到消息",
    "Retried": "重试",
    "Case cancelled": "工单已取消",
    "Case cancelled.": "工单已取消。",
    "Case completed": "工单完成",
    "SLA warning": "时限预警",
    "SLA breached": "时限超时",
    "Escalated": "已升级",
    # flashes and errors
    "Task assigned to %(user)s.": "任务已指派给 %(user)s。",
    "Task returned to its group.": "任务已退回所属组。",
    "The failed step was run again.": "已重新运行失败的步骤。",
    "Give a reason for cancelling the case.": "请填写取消工单的原因。",
    "Case %(id)s started.": "工单 %(id)s 已创建。",
    "You do not have access to this page.": "您无权访问此页面。",
    "Deployed: %(list)s": "已部署：%(list)s",
    "Nothing changed: no new version was deployed.": "没有变化，未部署新版本。",
    "No such form.": "没有这个表单。",
    "Not valid JSON: %(error)s": "不是有效的 JSON：%(error)s",
    "Form saved; new versions: %(list)s": "表单已保存，新版本：%(list)s",
    "Form saved.": "表单已保存。",
    "A form schema is a JSON object.": "表单定义必须是一个 JSON 对象。",
    "This task is no longer open.": "此任务已不再待办。",
    "Draft saved.": "草稿已保存。",
    "Task “%(name)s” completed.": "任务“%(name)s”已完成。",
    "Task claimed.": "任务已认领。",
    "Task returned to the group.": "任务已退回组内。",
    "Not allowed": "无权操作",
    "Not found": "未找到",
    "That is not possible now": "当前无法执行",
    "Please check your input": "请检查输入",
    "Too many attempts": "尝试次数过多",
    "Something went wrong": "出错了",
    "Back to the start page": "返回首页",
    # macros
    "No data yet.": "暂无数据。",
    "Hash chain": "哈希链",
    "Entered values": "填写内容",
    "the group": "所属组",
    "Nothing has happened yet.": "暂无记录。",
    "Pages": "分页",
    "Previous": "上一页",
    "Page %(n)s": "第 %(n)s 页",
    "Next": "下一页",
    # inbox
    "Search": "搜索",
    "Case no., reference, customer name or phone": "工单号、编号、客户姓名或电话",
    "Task lists": "任务列表",
    "All my work": "我的全部工作",
    "All open tasks": "全部待办任务",
    "Assigned to me": "指派给我",
    "My groups": "我的组",
    "Procedure": "流程",
    "All": "全部",
    "Priority": "优先级",
    "State": "状态",
    "Filter": "筛选",
    "Clear filters": "清除筛选",
    "Task": "任务",
    "Case": "工单",
    "Customer": "客户",
    "Group": "组",
    "Assignee": "处理人",
    "Due": "截止时间",
    "Actions": "操作",
    "Claim": "认领",
    "Release": "退回",
    "No open task matches “%(q)s”.": "没有与“%(q)s”匹配的待办任务。",
    "No open tasks here. Well done!": "这里没有待办任务，干得好！",
    # task page
    "%(user)s is working on this task. You can read it but not change it.": "%(user)s 正在处理此任务，您只能查看。",
    "This task belongs to %(groups)s. You can read it but not work on it.": "此任务属于 %(groups)s，您只能查看。",
    "A draft of this form was saved; its values are filled in below.": "此表单有已保存的草稿，内容已填入下方。",
    "Complete task": "完成任务",
    "Save draft": "保存草稿",
    "Earlier answers": "此前填写",
    "Case data": "工单数据",
    "Phone numbers and addresses are masked for your role.": "按您的角色，电话和地址已隐藏部分内容。",
    "History": "历史记录",
    "Open the case page": "打开工单页面",
    # case page
    "Ended": "结束",
    "Started": "创建",
    "Last change": "最后更新",
    "Run the failed step again": "重新运行失败的步骤",
    "Cancel case…": "取消工单…",
    "Reason": "原因",
    "Cancel this case? This cannot be undone.": "确定取消此工单吗？此操作不可撤销。",
    "Cancel case": "取消工单",
    "Diagram": "流程图",
    "Active": "进行中",
    "Open tasks": "待办任务",
    "No open tasks.": "没有待办任务。",
    "Pending timers": "待触发定时器",
    "No pending timers.": "没有待触发的定时器。",
    "Linked cases": "关联工单",
    "(not visible to you)": "（您无权查看）",
    "Start a procedure, for example for a phone call. Its first step opens for you if it belongs to your group.":
        "为来电等情况发起流程。如果第一步属于您的组，会直接为您打开。",
    "Start": "发起",
    "No procedure is deployed yet.": "尚未部署任何流程。",
    # board and audit
    "Open tasks by assignee and SLA state": "按处理人和时限状态统计的待办任务",
    "Total": "合计",
    "Reassign": "重新指派",
    "Assign to": "指派给",
    "username, empty = group": "用户名，留空=退回组",
    "Assign": "指派",
    "Case no. or reference": "工单号或编号",
    "Status": "状态",
    "Reference": "编号",
    "No cases found.": "未找到工单。",
    "Read-only access: you can open every case and its history, but not change anything.":
        "只读权限：您可以查看所有工单及其历史，但不能做任何修改。",
    # processes
    "Modeler": "流程建模",
    "latest: v%(n)s": "最新：v%(n)s",
    "New diagram": "新建流程图",
    "Select an element to edit its name, lane (staff group), form and SLA policy. Deploy creates a new version; "
    "running cases keep theirs.":
        "选择一个元素以编辑名称、泳道（员工组）、表单和时限策略。部署会生成新版本，进行中的工单保持原版本。",
    "Back to the versions": "返回版本列表",
    "Edit diagram": "编辑流程图",
    "Versions": "版本",
    "Version": "版本",
    "Deployed": "部署时间",
    "By": "部署人",
    "Forms": "表单",
    "This version uses no forms.": "此版本未使用表单。",
    "Name": "名称",
    "Key": "标识",
    "Latest version": "最新版本",
    "No process is deployed yet.": "尚未部署任何流程。",
    "Upload and deploy a bundle": "上传并部署",
    "BPMN, DMN and form (.json) files, checked together; nothing is stored if any file has an error. Only "
    "processes that changed get a new version.":
        "BPMN、DMN 和表单（.json）文件一起校验；任何文件有错误则全部不保存。只有发生变化的流程才会生成新版本。",
    "The bundle was not deployed:": "未部署，发现以下问题：",
    "File": "文件",
    "Element": "元素",
    "Line": "行",
    "Problem": "问题",
    "Files": "文件",
    "Deploy": "部署",
    "Form": "表单",
    "Form editor": "表单编辑器",
    "Used by: %(files)s. Saving deploys new versions of these processes.":
        "使用者：%(files)s。保存后将部署这些流程的新版本。",
    "The form was not saved:": "表单未保存：",
    "line": "行",
    "JSON Schema": "JSON Schema 定义",
    "Save and deploy": "保存并部署",
    "Preview": "预览",
}


def merge(po_path: str = "web/translations/zh/LC_MESSAGES/messages.po") -> list[str]:
    """Fill the catalogue from ZH; returns the message ids that still have no translation."""
    from babel.messages.pofile import read_po, write_po

    with open(po_path, "rb") as f:
        catalog = read_po(f, locale="zh_Hans_CN")
    missing = []
    for message in catalog:
        if not message.id:
            continue
        text = ZH.get(str(message.id))
        if text:
            message.string = text
            message.flags.discard("fuzzy")
        elif not message.string:
            missing.append(str(message.id))
    with open(po_path, "wb") as f:
        write_po(f, catalog, width=120, omit_header=False)
    return missing


if __name__ == "__main__":
    left = merge()
    print("untranslated:", *left, sep="\n  ") if left else print("all messages translated")
